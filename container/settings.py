"""Typed settings classes read from text: environment variables, flags and files.

A settings class is a frozen dataclass whose fields are declared with `setting(...)`:
each names its environment variable, its default, what it means, and optionally a
flag, choices, bounds or its own parser. `load` fills one from, in order of
precedence, flag values (by field name), the environment, and a lower-priority
mapping (e.g. values a file carries), parsing strictly through container.parse: a
typo fails naming the variable or flag it came from. `check` enforces the choices and
bounds on any instance, also one built in code. No torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, get_type_hints

from container.parse import ConfigError, parse_bool, parse_float, parse_int


def setting(
    env: str,
    default,
    help: str,
    flag: str | None = None,
    choices=None,
    minimum=None,
    maximum=None,
    parse: Callable[[str, str], Any] | None = None,
):
    """A settings field. `parse(text, name)` replaces the type's parser (and raises ConfigError)."""
    metadata = {"env": env, "help": help, "flag": flag, "choices": choices, "minimum": minimum, "maximum": maximum, "parse": parse}
    return field(default=default, metadata=metadata)


def parse_value(raw: str, hint, name: str, parse=None):
    if parse is not None:
        return parse(raw, name)
    kind = str(hint)
    if "bool" in kind:
        return parse_bool(raw, name)
    if "int" in kind:
        return parse_int(raw, name)
    if "float" in kind:
        return parse_float(raw, name)
    return raw.strip()


def check(instance) -> None:
    """Choices, bounds and booleans of every field that has a value."""
    hints = get_type_hints(type(instance))
    for spec in dataclasses.fields(instance):
        value, meta = getattr(instance, spec.name), spec.metadata
        if value is None or meta.get("parse") is not None:
            continue
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{meta['env']}={value!r}: choose one of {', '.join(meta['choices'])}")
        if meta["minimum"] is not None and value < meta["minimum"]:
            raise ConfigError(f"{meta['env']}={value}: must be >= {meta['minimum']}")
        if meta["maximum"] is not None and value > meta["maximum"]:
            raise ConfigError(f"{meta['env']}={value}: must be <= {meta['maximum']}")
        if "bool" in str(hints[spec.name]) and not isinstance(value, bool):
            raise ConfigError(f"{meta['env']}={value!r}: expected true or false")


def load(
    cls,
    environ: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    fallback: Mapping[str, str] | None = None,
    fallback_name: str = "",
):
    """An instance of `cls` from flag values (`overrides`, by field name), then the
    environment, then `fallback` (by field name; errors name it as fallback_name.FIELD)."""
    hints = get_type_hints(cls)
    values = {}
    for spec in dataclasses.fields(cls):
        meta = spec.metadata
        candidates = (
            ((overrides or {}).get(spec.name), meta["flag"] or meta["env"]),
            (environ.get(meta["env"]), meta["env"]),
            ((fallback or {}).get(spec.name), f"{fallback_name}.{spec.name}" if fallback_name else spec.name),
        )
        for raw, source in candidates:
            if raw is not None and str(raw).strip():
                values[spec.name] = parse_value(str(raw), hints[spec.name], source, meta["parse"])
                break
    return cls(**values)
