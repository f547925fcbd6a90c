"""docs/serving.md's settings table is generated from ServeConfig (container/serving.py,
torch-free) and fails this test when it is stale."""

import dataclasses
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from container.serving import ServeConfig  # noqa: E402 (importable after the path insert)
from tests.support.docs import docs_reference  # noqa: E402


def test_serving_doc_holds_the_generated_settings_table():
    page = (REPO / "docs" / "serving.md").read_text()
    assert "<!-- generated: serving-settings -->" in page
    assert docs_reference().render(page) == page, "docs/serving.md is stale: run python3 docs/reference.py"
    for field in dataclasses.fields(ServeConfig):
        assert f"| `{field.metadata['env']}` |" in page, field.name


def test_a_changed_serving_default_makes_the_page_stale():
    page = (REPO / "docs" / "serving.md").read_text()
    row = "| `SM_VISION_TOP_K` | `--top-k` | `5` |"
    assert row in page
    assert docs_reference().render(page.replace(row, row.replace("`5`", "`6`"))) == page


def test_serving_doc_has_the_aws_migration_part_with_one_curl_per_payload_type():
    page = (REPO / "docs" / "serving.md").read_text()
    section = page.split("## Coming from AWS's PyTorch inference image", 1)[1].split("\n## ", 1)[0]
    assert "**What works unchanged**" in section and "**What differs**" in section
    for ctype in ("application/json", "text/csv", "application/x-npy", "application/x-npz", "image/jpeg"):
        assert f"curl -s -H 'Content-Type: {ctype}'" in section, ctype
