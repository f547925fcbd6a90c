"""Files tests write: SageMaker's JSON config files and the like."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))
