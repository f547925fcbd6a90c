"""Where the monitored model comes from: a directory, a model.tar.gz, or an S3 object.

A Model Monitor job cannot mount the model (its inputs are the captures and the
baseline files), so SM_VISION_MONITOR_MODEL may name s3://bucket/key/model.tar.gz: it
is downloaded with the job's own credentials (boto3's default chain: the job's role).
Archives are extracted by the server's checked extraction (serve.archive: no links, no
paths outside the target, bounded size).
"""

from __future__ import annotations

import logging
from pathlib import Path

from container import ConfigError
from serve.archive import ExtractLimits, extract_model_archive
from vision.artifact import SPEC_FILE

log = logging.getLogger(__name__)

ARCHIVE = "model.tar.gz"


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ConfigError(f"SM_VISION_MONITOR_MODEL={uri!r}: expected s3://bucket/key/model.tar.gz")
    return bucket, key


def download(uri: str, destination: Path, client=None) -> Path:
    """The S3 object at uri, saved at destination; ConfigError naming the object otherwise."""
    bucket, key = split_s3_uri(uri)
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ConfigError(f"SM_VISION_MONITOR_MODEL={uri}: boto3 is not installed, so S3 models cannot be read") from None
    client = client or boto3.client("s3")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        client.download_file(bucket, key, str(destination))
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "error")
        raise ConfigError(f"cannot download {uri}: {code} (does the job's role have s3:GetObject on it?)") from None
    except BotoCoreError as err:
        raise ConfigError(f"cannot download {uri}: {err}") from None
    log.info("downloaded %s (%d bytes)", uri, destination.stat().st_size)
    return destination


def resolve(source: str, scratch: Path, limits: ExtractLimits | None = None, client=None) -> Path:
    """The directory holding model_spec.json for `source` (extracting into scratch as needed)."""
    if source.startswith("s3://"):
        archive = download(source, scratch / ARCHIVE, client)
        return extract_model_archive(archive, scratch / "model", limits)
    path = Path(source)
    if path.is_file():
        return extract_model_archive(path, scratch / "model", limits)
    if not path.is_dir():
        raise ConfigError(
            f"SM_VISION_MONITOR_MODEL={source}: no such directory or file (mount the model there, or give s3://.../model.tar.gz)"
        )
    if (path / SPEC_FILE).is_file():
        return path
    if (path / ARCHIVE).is_file():
        return extract_model_archive(path / ARCHIVE, scratch / "model", limits)
    raise ConfigError(f"{path} holds neither {SPEC_FILE} nor {ARCHIVE}: is it a model trained by this image?")
