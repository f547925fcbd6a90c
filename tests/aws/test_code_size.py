"""aws/ stays readable by a new maintainer: no function over 60 lines, no file over
400 (the tools and the Lambda bridge alike)."""

from __future__ import annotations

import ast

import pytest

from tests.support.aws import REPO

MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400
SOURCES = sorted((REPO / "aws").rglob("*.py"))


def test_the_sources_are_found():
    names = {path.relative_to(REPO).as_posix() for path in SOURCES}
    assert {"aws/smvision_aws/cli.py", "aws/smvision_aws/commands/endpoints.py", "aws/lambda/handler.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: path.relative_to(REPO).as_posix())
def test_file_and_function_lengths(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_FILE_LINES, f"{path.name}: {len(source.splitlines())} lines"
    long = {
        f"{node.name} (line {node.lineno})": node.end_lineno - node.lineno + 1
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long == {}, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines"
