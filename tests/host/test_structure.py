"""The code's shape stays as docs/where-things-live.md describes it: the serving stack
never imports the trainer, project modules import no circle, functions and files stay
short enough to read, tests share helpers through tests/support and conftest fixtures
(a test module never imports another), and the contributors' page names every module.

Read from the source with ast: nothing of the project is imported or run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("container", "vision", "train", "serve", "monitor")
AWS = REPO / "aws"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400
MAX_FIT_LINES = 60


def project_files() -> list[Path]:
    files = [path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))]
    files += sorted(AWS.rglob("*.py"))  # the host tools and the Lambda bridge
    return files


def module_name(path: Path) -> str:
    root = AWS if path.is_relative_to(AWS / "smvision_aws") else REPO
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, modules: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Modules `path` imports, anywhere in the file (function-level imports count too).
    `from package import submodule` counts as importing the submodule alone when it is
    one of `modules`: that is how a package's modules name each other."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= names
            if not names <= modules:
                found.add(node.module)
    return found


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1, node.lineno


def test_functions_and_files_are_short():
    long_functions, long_files = [], []
    for path in project_files():
        where = path.relative_to(REPO)
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            long_files.append(f"{where}: {lines} lines")
        long_functions += [f"{where}:{line} {name}: {count} lines" for name, count, line in functions(path) if count > MAX_FUNCTION_LINES]
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_fit_reads_in_one_screen():
    sizes = {name: count for path in (REPO / "train").rglob("*.py") for name, count, _ in functions(path) if name == "fit"}
    assert sizes, "train/ has no fit()"
    assert max(sizes.values()) <= MAX_FIT_LINES, sizes


def test_serve_imports_nothing_from_train():
    leaks = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in (REPO / "serve").rglob("*.py")
        for name in imports(path)
        if name == "train" or name.startswith("train.")
    ]
    assert not leaks, leaks


def test_the_core_imports_neither_train_nor_serve():
    leaks = [
        f"{path.relative_to(REPO)} imports {name}"
        for package in ("container", "vision")
        for path in (REPO / package).rglob("*.py")
        for name in imports(path)
        if name.split(".")[0] in ("train", "serve", "monitor")
    ]
    assert not leaks, leaks


def test_no_import_circle():
    modules = {module_name(path): path for path in project_files()}
    graph = {name: {other for other in imports(path, set(modules)) if other in modules and other != name} for name, path in modules.items()}
    circles = []

    def visit(name: str, stack: list[str], done: set[str]) -> None:
        if name in stack:
            circles.append(" -> ".join(stack[stack.index(name) :] + [name]))
            return
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, [*stack, name], done)
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    assert not circles, circles


def test_no_test_module_imports_another():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if "support" in path.relative_to(REPO / "tests").parts:
            continue
        package = ".".join(path.parent.relative_to(REPO).parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from .conftest import ..., from . import test_x
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "tests" and any(part.startswith("test_") or part == "conftest" for part in parts):
                    offenders.append(f"{path.relative_to(REPO)} imports {name}")
                    break
    assert not offenders, offenders


def test_where_things_live_names_every_module():
    page = (REPO / "docs" / "where-things-live.md").read_text()
    named = set(re.findall(r"`((?:container|vision|train|serve|monitor|aws)/[\w/]+\.py)`", page))
    on_disk = {path.relative_to(REPO).as_posix() for path in project_files() if path.name != "__init__.py" and path.name != "__main__.py"}
    assert not on_disk - named, f"modules missing from docs/where-things-live.md: {sorted(on_disk - named)}"
    assert not named - on_disk, f"docs/where-things-live.md names modules that do not exist: {sorted(named - on_disk)}"
