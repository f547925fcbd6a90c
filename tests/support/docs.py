"""docs/reference.py, the generator of the reference tables in docs/, loaded as a module
for the host tests that check docs/ is current (it imports the torch-free config
modules, so the repository root must be on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def docs_reference():
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "docs" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
