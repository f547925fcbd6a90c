"""Build the Lambda bridge's deployment zip: handler.py and the server's URL guard
(serve/urlguard.py, standard library only) at the zip's root, nothing else (boto3
comes with the Lambda Python runtime). Byte-for-byte reproducible."""

from __future__ import annotations

import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HANDLER = REPO / "aws" / "lambda" / "handler.py"
URL_GUARD = REPO / "serve" / "urlguard.py"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: same source, same zip, same hash


def build_zip(out: Path, handler: Path = HANDLER, url_guard: Path = URL_GUARD) -> Path:
    for source in (handler, url_guard):
        if not source.is_file():
            raise FileNotFoundError(f"{source} not found: run from a checkout of the repository")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for name, source in (("handler.py", handler), ("urlguard.py", url_guard)):
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source.read_bytes())
    tmp.replace(out)
    return out
