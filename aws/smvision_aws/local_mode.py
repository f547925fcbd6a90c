"""What `--local` leaves on this machine's docker, and the per-host check of local training.

`train --local` / `tune --local` run SDK 3's local container mode (local_training.py):
one compose service per host in a project named `smvtrain<hex>`. `deploy --local` and
`transform --local` run one serving container labelled `smvision-aws.local`
(local_hosting.py). Each command removes its containers when it ends, also when it
fails; a killed process can leave them behind, and `cleanup --local --image IMAGE`
removes those (only ones created from that image).
"""

from __future__ import annotations

import subprocess

LOCAL_LABEL = "smvision-aws.local"
TRAINING_PROJECT_PREFIX = "smvtrain"
_COMPOSE_PROJECT = "com.docker.compose.project"


class LocalJobError(RuntimeError):
    """A local run failed (a host exited non-zero, a server never answered /ping, ...)."""


def docker(args: list[str], docker_cli: str = "docker") -> str:
    """stdout of a docker CLI call; a failure says what docker said."""
    result = subprocess.run([docker_cli, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise LocalJobError(f"docker {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def check_hosts(results: dict[str, tuple[str | None, int | None]]) -> None:
    """{host: (container, exit code)}: fail naming every host that did not exit 0 (local
    mode reports only the first container to exit)."""
    failed = {h: code for h, (_, code) in results.items() if code != 0}
    if failed:
        raise LocalJobError(
            "local training: the SDK reported success from the first host to exit, but "
            + ", ".join(f"{h} exited with {c if c is not None else 'no container'}" for h, c in failed.items())
            + " (137: killed when another host exited first)"
        )


def leftover_containers(image: str, docker_cli: str = "docker") -> list[tuple[str, str]]:
    """(id, name) of the containers `--local` runs created from `image`, matched by the
    image name they were created with (a rebuild that moves the tag does not hide them)."""
    row_format = "\t".join(["{{.ID}}", "{{.Names}}", f'{{{{.Label "{LOCAL_LABEL}"}}}}', f'{{{{.Label "{_COMPOSE_PROJECT}"}}}}'])
    ours = []
    for row in docker(["ps", "-a", "--no-trunc", "--format", row_format], docker_cli).splitlines():
        cid, name, local, project = (row.split("\t") + ["", "", "", ""])[:4]
        if local or project.startswith(TRAINING_PROJECT_PREFIX):
            ours.append((cid, name))
    if not ours:
        return []
    created_from = dict(
        line.split(" ", 1)
        for line in docker(["inspect", "-f", "{{.Id}} {{.Config.Image}}", *[cid for cid, _ in ours]], docker_cli).splitlines()
        if line.strip()
    )
    return [(cid, name) for cid, name in ours if created_from.get(cid) == image]


def remove_containers(names: list[str], docker_cli: str = "docker") -> None:
    if names:
        subprocess.run([docker_cli, "rm", "-f", *names], check=True, capture_output=True)
