"""Bad command-line input, and the NAME=VALUE lists every command group parses.

UsageError is raised by the command groups and by the request builders they call
(a flag that cannot work is refused before any AWS call); `smvision-aws` catches it
once, prints its message and exits 2.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad command-line input; the message says what to change."""


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """['a=1', 'b=x=y'] -> {'a': '1', 'b': 'x=y'}; rejects items without '='."""
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} {item!r}: expected NAME=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_tags(items: list[str] | None) -> list[dict[str, str]]:
    """--tag KEY=VALUE items as the Tags of a SageMaker request."""
    return [{"Key": k, "Value": v} for k, v in parse_pairs(items, "tag").items()]
