"""Regenerate the reference tables in docs/ from the config classes.

    python3 docs/reference.py          # rewrite the generated blocks in place
    python3 docs/reference.py --check  # exit 1 when a block is stale (a host test runs this)

A generated block sits between `<!-- generated: NAME -->` and `<!-- end generated -->`
in a docs page; NAME picks the table below. Only torch-free modules are imported, so
this runs on a host without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def _code(value) -> str:
    if value is None:
        return "`—`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def hyperparameters_table() -> str:
    from train.config import TrainConfig

    rows = ["| name | default | meaning |", "| --- | --- | --- |"]
    for field in dataclasses.fields(TrainConfig):
        name = f"`{field.name.replace('_', '-')}`"
        aliases = field.metadata["aliases"]
        if aliases:
            name += " (also " + ", ".join(f"`{a}`" for a in aliases) + ")"
        meaning = field.metadata["help"]
        if field.metadata["choices"]:
            meaning += ": " + " \\| ".join(field.metadata["choices"])
        rows.append(f"| {name} | {_code(field.default)} | {meaning} |")
    return "\n".join(rows) + "\n"


def serving_settings_table() -> str:
    from container.serving import ServeConfig

    rows = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for field in dataclasses.fields(ServeConfig):
        meta = field.metadata
        flag = f"`{meta['flag']}`" if meta["flag"] else ""
        meaning = meta["help"]
        if meta["choices"]:
            meaning += ": " + " \\| ".join(meta["choices"])
        rows.append(f"| `{meta['env']}` | {flag} | {_code(field.default)} | {meaning} |")
    return "\n".join(rows) + "\n"


def monitoring_settings_table() -> str:
    from container.monitoring import MonitoringJob, MonitorSettings

    rows = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for cls in (MonitoringJob, MonitorSettings):
        for field in dataclasses.fields(cls):
            meta = field.metadata
            flag = f"`{meta['flag']}`" if meta["flag"] else ""
            default = "`endpointInput, endpointOutput`" if isinstance(field.default, tuple) else _code(field.default)
            rows.append(f"| `{meta['env']}` | {flag} | {default} | {meta['help']} |")
    return "\n".join(rows) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "hyperparameters": hyperparameters_table,
    "serving-settings": serving_settings_table,
    "monitoring-settings": monitoring_settings_table,
}


def render(text: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise SystemExit(f"unknown generated block {name!r}; known: {', '.join(TABLES)}")
        return match.group(1) + TABLES[name]() + match.group(4)

    return BLOCK.sub(replace, text)


def stale_pages() -> list[Path]:
    return [page for page in sorted(DOCS.glob("*.md")) if render(page.read_text()) != page.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the reference tables in docs/.")
    parser.add_argument("--check", action="store_true", help="only report stale pages (exit 1 if any)")
    args = parser.parse_args(argv)
    stale = stale_pages()
    if args.check:
        for page in stale:
            print(f"{page.relative_to(REPO)} is stale: run python3 docs/reference.py")
        return 1 if stale else 0
    for page in stale:
        page.write_text(render(page.read_text()))
        print(f"rewrote {page.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # run as a script from anywhere: train/ is torch-free here
    sys.exit(main())
