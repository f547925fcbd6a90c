"""What SDK local mode does not check or clean up by itself.

Local mode runs each host as a compose service in a container named
`<10 random chars>-algo-N-<5 chars>` and reports only the exit code of the first
container to exit (compose --abort-on-container-exit), so a job can "succeed" while
another host was killed or failed: `host_exit_codes` reads every host's own result.
The stopped containers stay behind; `remove_containers` deletes them. Local-mode
endpoints live in the deploying process; a killed process can leave a serving
container running, which `cleanup --local --image IMAGE` removes.
"""

from __future__ import annotations

import re
import subprocess

_NAME = re.compile(r"^[a-z0-9]{10}-algo-\d+-[a-z0-9]{5}$")


class LocalJobError(RuntimeError):
    """A local-mode host failed although the SDK reported success."""


def _docker(args: list[str], docker: str = "docker") -> str:
    return subprocess.run([docker, *args], check=True, capture_output=True, text=True).stdout


def job_hosts(session, job_name: str) -> list[str]:
    """The algo-N-xxxxx host names of a local training job run in this process."""
    jobs = getattr(type(session.sagemaker_client), "_training_jobs", {})
    job = jobs.get(job_name)
    if job is None or job.container is None:
        raise LookupError(f"local training job {job_name} is not known to this process")
    return list(job.container.hosts)


def host_exit_codes(hosts: list[str], docker: str = "docker") -> dict[str, tuple[str, int | None]]:
    """{host: (container name, exit code)}; (None, None) when no container is left."""
    results: dict[str, tuple[str, int | None]] = {}
    for host in hosts:
        rows = _docker(["ps", "-a", "--filter", f"name={host}", "--format", "{{.Names}}"], docker).split()
        names = [n for n in rows if n.endswith("-" + host) and _NAME.match(n)]
        if not names:
            results[host] = (None, None)
            continue
        code = _docker(["inspect", "-f", "{{.State.ExitCode}}", names[0]], docker).strip()
        results[host] = (names[0], int(code))
    return results


def check_hosts(results: dict[str, tuple[str, int | None]]) -> None:
    failed = {h: code for h, (_, code) in results.items() if code != 0}
    if failed:
        raise LocalJobError(
            "local training: the SDK reported success from the first host to exit, but "
            + ", ".join(f"{h} exited with {c if c is not None else 'no container'}" for h, c in failed.items())
            + " (137: killed when another host exited first)"
        )


def leftover_containers(image: str, docker: str = "docker") -> list[tuple[str, str]]:
    """(id, name) of local-mode containers created from `image`, by the image name they
    were created with (a rebuild that moves the tag does not hide them)."""
    out = _docker(["ps", "-a", "--filter", "name=-algo-", "--format", "{{.ID}} {{.Names}}"], docker)
    rows = [line.split(" ", 1) for line in out.splitlines() if line.strip()]
    rows = [(cid, name) for cid, name in rows if _NAME.match(name)]
    if not rows:
        return []
    created_from = dict(
        line.split(" ", 1)
        for line in _docker(["inspect", "-f", "{{.Name}} {{.Config.Image}}", *[cid for cid, _ in rows]], docker).splitlines()
        if line.strip()
    )
    return [(cid, name) for cid, name in rows if created_from.get("/" + name) == image]


def remove_containers(names: list[str], docker: str = "docker") -> None:
    if names:
        subprocess.run([docker, "rm", "-f", *names], check=True, capture_output=True)


class removing_new_containers:  # noqa: N801 - used as a context manager
    """Remove the local-mode containers of `image` that appear inside the block (local
    mode leaves stopped training, serving and transform containers behind), also when
    the block fails. Containers that existed before are never touched."""

    def __init__(self, image: str, docker: str = "docker"):
        self.image = image
        self.docker = docker

    def __enter__(self):
        self.before = {name for _, name in leftover_containers(self.image, self.docker)}
        return self

    def __exit__(self, *exc):
        new = {name for _, name in leftover_containers(self.image, self.docker)} - self.before
        remove_containers(sorted(new), self.docker)
        return False
