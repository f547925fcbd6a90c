"""Build the Lambda bridge's deployment zip: handler.py at the zip's root, nothing else
(boto3 comes with the Lambda Python runtime). Byte-for-byte reproducible."""

from __future__ import annotations

import zipfile
from pathlib import Path

HANDLER = Path(__file__).resolve().parents[1] / "lambda" / "handler.py"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: same source, same zip, same hash


def build_zip(out: Path, handler: Path = HANDLER) -> Path:
    if not handler.is_file():
        raise FileNotFoundError(f"{handler} not found: run from a checkout of the repository")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = zipfile.ZipInfo("handler.py", FIXED_TIME)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr(info, handler.read_bytes())
    tmp.replace(out)
    return out
