"""The docs stay true to the code: generated reference tables are current, links
resolve, the README keeps its two commands, and nothing points outside the repository."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # docs/reference.py imports the torch-free config modules

from tests.support.docs import docs_reference  # noqa: E402 (importable after the path insert)


def test_generated_reference_tables_are_current():
    stale = docs_reference().stale_pages()
    assert not stale, f"stale generated tables in {[str(p) for p in stale]}: run python3 docs/reference.py"


def test_every_generated_block_names_a_known_table():
    reference = docs_reference()
    names = {m.group("name") for page in (REPO / "docs").glob("*.md") for m in reference.BLOCK.finditer(page.read_text())}
    assert names, "no generated blocks found: the hyperparameter table must be generated"
    assert names <= set(reference.TABLES), names - set(reference.TABLES)


def test_a_stale_table_is_detected():
    reference = docs_reference()
    page = (REPO / "docs" / "training.md").read_text()
    assert "`batch-size` | `32`" in page
    assert reference.render(page.replace("`batch-size` | `32`", "`batch-size` | `33`")) == page


def test_readme_keeps_the_two_commands_and_ci_runs_the_test_command():
    readme = (REPO / "README.md").read_text()
    assert "bash local_test/demo.sh" in readme
    assert "bash tests/run_all.sh" in readme
    assert "bash tests/run_all.sh" in (REPO / ".ci" / "run").read_text()
    assert len(readme.splitlines()) <= 220, "the README is an overview; topics live in docs/"


def test_relative_links_in_readme_and_docs_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation other than
    hyphens and underscores dropped, spaces to hyphens, repeats numbered."""
    anchors, seen = set(), {}
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' in a code block is no heading
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_links_to_headings_resolve():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            linked = (page.parent / target) if target else page
            if linked.suffix == ".md" and linked.exists() and anchor not in heading_anchors(linked):
                broken.append(f"{page.relative_to(REPO)} -> {target}#{anchor}")
    assert not broken, broken


def test_heading_anchors_follow_githubs_rules(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Per-request options (custom attributes)\n## `SM_VISION_ENGINE`: a/b\n```\n# not a heading\n```\n## Speed\n## Speed\n"
    )
    assert heading_anchors(page) == {"per-request-options-custom-attributes", "sm_vision_engine-ab", "speed", "speed-1"}


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    this_file = Path(__file__).relative_to(REPO).as_posix()
    pattern = re.compile(r"COMPAT\.md|STYLE\.md|\.\./shared\b")
    hits = [
        name
        for name in tracked
        if name != this_file and (REPO / name).is_file() and pattern.search((REPO / name).read_text(errors="ignore"))
    ]
    assert not hits, f"files that point outside the repository: {hits}"
