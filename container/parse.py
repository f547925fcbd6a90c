"""Strict parsing of configuration text: the one parser for booleans and numbers.

Environment variables, hyperparameters, flags and the numbers a client sends (a
request's `?top_k=`, `X-Top-K`) all arrive as text. A typo such as `flase` or `1O` must
fail naming the setting, never silently mean the default, so every reader in the
project (container/, serve/, the security settings) goes through these functions.
ConfigError lives here because these are the functions that raise it.

Numbers are ASCII only, in plain decimal notation, and at most MAX_NUMBER_CHARS long.
Python's int() and float() also take other scripts' digits (`int("٣") == 3`),
underscores (`1_000`) and, for int(), 4,300 digits before they give up; str.isdigit()
even says yes to `²`, which int() then refuses. A client's `?top_k=²` or a 5,000-digit
value is therefore a ConfigError (a 400 where serve/ maps it) with a short message,
and the conversion never sees more than MAX_NUMBER_CHARS characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

TRUE_WORDS = frozenset({"true", "1", "yes", "y", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "off"})
ASCII_SPACE = " \t\r\n\f\v"  # what may surround a number (a trailing newline in an env file); nothing else
MAX_NUMBER_CHARS = 40  # longer than any setting needs (a 64-bit int is 20 characters)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


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


def _shown(text: object) -> str:
    """text as a message shows it: quoted, and cut short when a client sent pages of it."""
    text = str(text)
    return repr(text) if len(text) <= MAX_NUMBER_CHARS else f"{text[:MAX_NUMBER_CHARS]!r}... ({len(text)} characters)"


def _number_text(text: object, name: str, pattern: re.Pattern, what: str) -> str:
    stripped = str(text).strip(ASCII_SPACE)
    if len(stripped) > MAX_NUMBER_CHARS:
        raise ConfigError(f"{name}={_shown(text)}: expected {what} of at most {MAX_NUMBER_CHARS} characters")
    if not stripped.isascii() or not pattern.fullmatch(stripped):
        raise ConfigError(f"{name}={_shown(text)}: expected {what} (ASCII digits)")
    return stripped


def parse_int(text: str, name: str = "value", minimum: int | None = None, maximum: int | None = None) -> int:
    value = int(_number_text(text, name, _INTEGER, "a whole number"))
    return _check_range(name, value, minimum, maximum)


def parse_float(text: str, name: str = "value", minimum: float | None = None, maximum: float | None = None) -> float:
    stripped = _number_text(text, name, _DECIMAL, "a number")
    value = float(stripped)
    if not math.isfinite(value):  # 1e999
        raise ConfigError(f"{name}={_shown(text)}: expected a finite number")
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
