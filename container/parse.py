"""Strict parsing of configuration text: the one parser for booleans and numbers.

Environment variables, hyperparameters and flags all arrive as text. A typo such as
`flase` or `1O` must fail naming the setting, never silently mean the default, so every
reader in the project (container/, serve/, the security settings) goes through these
functions. ConfigError lives here because these are the functions that raise it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

TRUE_WORDS = frozenset({"true", "1", "yes", "y", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "off"})


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message names the field."""


def parse_bool(text: str, name: str = "value") -> bool:
    lowered = str(text).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={text!r}: expected true/false (also 1/0, yes/no, y/n, on/off)")


def _check_range(name: str, value, minimum, maximum):
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value}: must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value}: must be <= {maximum}")
    return value


def parse_int(text: str, name: str = "value", minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a whole number") from None
    return _check_range(name, value, minimum, maximum)


def parse_float(text: str, name: str = "value", minimum: float | None = None, maximum: float | None = None) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={text!r}: expected a finite number")
    return _check_range(name, value, minimum, maximum)


def _raw(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return None if value is None or not value.strip() else value


def env_bool(environ: Mapping[str, str], name: str, default: bool = False) -> bool:
    """environ[name] as a boolean; unset or blank means `default`."""
    raw = _raw(environ, name)
    return default if raw is None else parse_bool(raw, name)


def env_int(environ: Mapping[str, str], name: str, default: int | None, minimum: int | None = None, maximum: int | None = None):
    raw = _raw(environ, name)
    return default if raw is None else parse_int(raw, name, minimum, maximum)


def env_float(environ: Mapping[str, str], name: str, default: float | None, minimum: float | None = None, maximum: float | None = None):
    raw = _raw(environ, name)
    return default if raw is None else parse_float(raw, name, minimum, maximum)
