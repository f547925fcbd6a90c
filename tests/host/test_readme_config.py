"""The README documents every hyperparameter with its real default (train.config has
no torch import, so this runs on the host)."""

import dataclasses
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from train.config import TrainConfig  # noqa: E402


def test_every_hyperparameter_is_in_the_readme_with_its_default():
    readme = (REPO / "README.md").read_text()
    for field in dataclasses.fields(TrainConfig):
        name = field.name.replace("_", "-")
        row = re.search(rf"^\| `{re.escape(name)}`.*$", readme, re.MULTILINE)
        assert row, f"README lacks a row for {name}"
        default = "—" if field.default is None else (str(field.default).lower() if isinstance(field.default, bool) else str(field.default))
        assert f"`{default}`" in row.group(0), f"README's default for {name} is not {default}: {row.group(0)}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    assert "bash tests/run_all.sh" in readme
    assert "bash tests/run_all.sh" in (REPO / ".ci" / "run").read_text()
