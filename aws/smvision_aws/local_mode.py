"""Containers that SDK local mode leaves behind (compose services named algo-N-xxxxx).

Local-mode endpoints live in the process that deployed them, which stops them on exit;
a killed process can leave a serving container running, which `cleanup --local`
removes. Only containers of the given image are touched.
"""

from __future__ import annotations

import re
import subprocess

_NAME = re.compile(r"^algo-\d+-[a-z0-9]{5}$")


def leftover_containers(image: str, docker: str = "docker") -> list[tuple[str, str]]:
    out = subprocess.run(
        [docker, "ps", "-a", "--filter", f"ancestor={image}", "--format", "{{.ID}} {{.Names}}"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = [line.split(" ", 1) for line in out.splitlines() if line.strip()]
    return [(cid, name) for cid, name in rows if _NAME.match(name)]


def remove_containers(ids: list[str], docker: str = "docker") -> None:
    if ids:
        subprocess.run([docker, "rm", "-f", *ids], check=True, capture_output=True)
