"""Model names and model.tar.gz extraction, both treated as untrusted input.

A multi-model endpoint's model_name becomes a directory name, so it must be one path
segment that cannot leave its parent: letters, digits, `_` and `-`, and dots only
between them (`traced_resnet18`, `resnet18.v2`, `model-1.tar.gz` pass; `.`, `..`,
`.hidden`, `a/b`, `a..b` and anything non-ASCII do not). SageMaker's own ModelName
pattern (letters, digits, inner hyphens) is stricter, but the names a client loads
through the MME API are not ModelNames: AWS's multi-model test loads
`traced_resnet18`, and the target model of an invocation is a file name under the
model data prefix.

Extraction writes only regular files and directories, strictly below the target: no
absolute names, no `..`, no links, devices, FIFOs or sparse members. Permissions are
reduced to rw-r--r-- (rwxr-xr-x for executables and directories): setuid, setgid and
sticky bits and the archive's owners are dropped. The expanded size is capped in
total (SM_VISION_MAX_MODEL_EXTRACT_MB) and relative to the archive (a gzip bomb of a
few MB that expands to GBs is refused while it is being read, not after). Files go
to a fresh temporary directory that is renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from container import ConfigError, ServeConfig

# Runs of letters, digits, '_' and '-', joined by single dots: never '.', '..', a leading
# or trailing dot, or a separator. The length allows for opaque (hash) names.
MODEL_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
MAX_MODEL_NAME = 255
CHUNK = 1024 * 1024
log = logging.getLogger(__name__)


class UnsafeArchive(ConfigError):
    """A model archive we refuse to extract; the message names the member or limit."""


@dataclass(frozen=True)
class ExtractLimits:
    max_bytes: int = ServeConfig.max_model_extract_mb << 20  # expanded total: the setting's default
    max_ratio: float = 100.0  # expanded / compressed, checked once past ratio_floor_bytes
    ratio_floor_bytes: int = 64 * 1024**2  # small archives may compress well (configs, code)
    max_members: int = 100_000

    @classmethod
    def from_config(cls, config: ServeConfig) -> ExtractLimits:
        return cls(max_bytes=config.max_model_extract_bytes)


def check_model_name(name: object) -> str:
    """name if it is a valid model name, else ValueError naming the rule."""
    if not isinstance(name, str) or len(name) > MAX_MODEL_NAME or not name.isascii() or not MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"model name {str(name)[:80]!r} is not valid: use letters, digits, '_' and '-', with dots only between them "
            f"(pattern ^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*$, at most {MAX_MODEL_NAME} characters)"
        )
    return name


def _member_path(member: tarfile.TarInfo) -> PurePosixPath:
    path = PurePosixPath(member.name)
    parts = [part for part in path.parts if part not in ("", ".")]
    if path.is_absolute() or ".." in parts or "\\" in member.name or "\0" in member.name:
        raise UnsafeArchive(f"refusing member {member.name!r}: absolute, '..' or odd characters")
    if not (member.isfile() or member.isdir()) or member.issparse():
        raise UnsafeArchive(f"refusing member {member.name!r}: only regular files and directories are extracted")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _copy(source, destination: Path, mode: int, budget: list[int], archive_bytes: int, limits: ExtractLimits) -> None:
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            budget[0] += len(chunk)
            _check_budget(budget[0], archive_bytes, limits)
            out.write(chunk)


def _check_budget(expanded: int, archive_bytes: int, limits: ExtractLimits) -> None:
    if expanded > limits.max_bytes:
        raise UnsafeArchive(f"expands past {limits.max_bytes >> 20} MiB (SM_VISION_MAX_MODEL_EXTRACT_MB)")
    if expanded > limits.ratio_floor_bytes and expanded > limits.max_ratio * max(archive_bytes, 1):
        raise UnsafeArchive(f"expands more than {limits.max_ratio:g}x its compressed size: refused as a decompression bomb")


def extract_model_archive(archive: Path, target: Path, limits: ExtractLimits | None = None) -> Path:
    """Extract archive into target (replacing it) under the rules above; UnsafeArchive
    or ConfigError otherwise, and then nothing is left at target."""
    limits = limits or ExtractLimits()
    archive_bytes = archive.stat().st_size
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    budget = [0]
    try:
        with tarfile.open(archive) as tar:
            for count, member in enumerate(tar, start=1):
                if count > limits.max_members:
                    raise UnsafeArchive(f"has more than {limits.max_members} members")
                relative = _member_path(member)
                _check_budget(budget[0] + member.size, archive_bytes, limits)  # the header's claim, before reading
                destination = staging / relative
                if member.isdir():
                    destination.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                executable = bool(member.mode & stat.S_IXUSR)
                source = tar.extractfile(member)
                _copy(source, destination, 0o755 if executable else 0o644, budget, archive_bytes, limits)
        for directory, _, _ in os.walk(staging):
            os.chmod(directory, 0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except UnsafeArchive as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise UnsafeArchive(f"{archive.name}: {err}") from None
    except (tarfile.TarError, OSError, EOFError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        log.error("cannot extract %s into %s: %r", archive, target, err)  # paths in the log, not in answers
        raise ConfigError(f"cannot extract {archive.name}: {type(err).__name__} (see the log)") from None
    return target
