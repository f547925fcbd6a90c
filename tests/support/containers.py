"""Driving the real image in tests: a fake /opt/ml to bind-mount, one-off containers run
to completion, waiting for a container to exit, its published port, and its server's
/ping. The docker fixtures (the client, the image, containers removed at teardown) are
in tests/container/conftest.py."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from pathlib import Path

import docker
import requests

LABEL = "sagemaker-vision-test"
# One value per pytest session, so the end-of-session sweep removes this session's
# leftovers only, never those of another run sharing the daemon.
SESSION = uuid.uuid4().hex[:12]


class Containers:
    """Starts containers with the test label and removes them at teardown."""

    def __init__(self, client):
        self.client = client
        self.started = []
        self.networks = []

    def run(self, image, command, **kwargs):
        kwargs.setdefault("detach", True)
        labels = dict(kwargs.pop("labels", {}) or {})
        labels[LABEL] = SESSION
        container = self.client.containers.run(image, command, labels=labels, **kwargs)
        self.started.append(container)
        return container

    def network(self):
        net = self.client.networks.create(f"smv-test-{uuid.uuid4().hex[:8]}", driver="bridge", labels={LABEL: SESSION})
        self.networks.append(net)
        return net

    def cleanup(self):
        for container in self.started:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for net in self.networks:
            with contextlib.suppress(docker.errors.NotFound):
                net.remove()


def wait_exit(container, timeout: float = 600) -> tuple[int, str]:
    """Exit code and combined logs of a container started detached."""
    result = container.wait(timeout=timeout)
    return result["StatusCode"], container.logs().decode(errors="replace")


def wait_for_log(container, pattern: str, timeout: float = 180) -> re.Match:
    """Block until the container's log matches `pattern`; fail if it exits first."""
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = container.logs().decode(errors="replace")
        match = regex.search(logs)
        if match:
            return match
        container.reload()
        if container.status == "exited":
            raise AssertionError(f"exited before logging {pattern!r}:\n{logs}")
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n" + container.logs().decode(errors="replace"))


def run_to_completion(client, image, command, timeout: float = 600, **kwargs) -> str:
    """Runs a one-off container, asserts that it exits 0 and removes it (also on
    failure); its logs."""
    handle = Containers(client)
    try:
        code, logs = wait_exit(handle.run(image, command, **kwargs), timeout=timeout)
        assert code == 0, logs
    finally:
        handle.cleanup()
    return logs


def opt_ml(tmp_path: Path) -> Path:
    """An empty /opt/ml tree to bind-mount, world-writable so the container can write."""
    root = tmp_path / "opt_ml"
    for sub in ("input/config", "input/data", "model", "output", "checkpoints"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o777)
    return root


def mount(root: Path) -> dict:
    return {str(root): {"bind": "/opt/ml", "mode": "rw"}}


def host_port(container, port: str = "8080/tcp", timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        ports = container.attrs["NetworkSettings"]["Ports"].get(port)
        if ports:
            return int(ports[0]["HostPort"])
        if container.status == "exited":
            raise AssertionError("container exited before publishing its port:\n" + container.logs().decode(errors="replace"))
        time.sleep(0.2)
    raise AssertionError(f"{port} was never published")


def wait_ping(base_url: str, container, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        container.reload()
        if container.status == "exited":
            raise AssertionError("server exited:\n" + container.logs().decode(errors="replace"))
        time.sleep(0.5)
    raise AssertionError("/ping never answered 200:\n" + container.logs().decode(errors="replace"))
