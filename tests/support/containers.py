"""Driving the real image in tests: a fake /opt/ml to bind-mount, one-off containers run
to completion, waiting for a container to exit, its published port, and its server's
/ping. The docker fixtures (the client, the image, containers removed at teardown) are
in tests/container/conftest.py."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
import uuid
from pathlib import Path

import docker
import requests

from container.serving import ENGINE_PRECISIONS, ENGINES

LABEL = "sagemaker-vision-test"
# One value per pytest session, so the end-of-session sweep removes this session's
# leftovers only, never those of another run sharing the daemon.
SESSION = uuid.uuid4().hex[:12]


ENGINE_VARIABLE = "SMV_TEST_ENGINE"


@functools.cache
def serving_engine() -> str:
    """The engine the test run serves our classifier on ($SMV_TEST_ENGINE: auto, torch or
    onnxruntime; default auto, what a user gets): every server container the tests start
    is given it as SM_VISION_ENGINE (tests/run_all.sh runs the serve tests under each)."""
    engine = os.environ.get(ENGINE_VARIABLE, "auto")
    if engine not in ENGINES:
        raise ValueError(f"{ENGINE_VARIABLE}={engine!r}: choose one of {', '.join(ENGINES)}")
    return engine


def serves_user_script(environment: dict, volumes: dict | None) -> bool:
    """Whether the server's model comes with a user's inference.py (model/code, a
    multi-model endpoint's models/NAME/model/code, or the SDK's SAGEMAKER_PROGRAM /
    SAGEMAKER_SUBMIT_DIRECTORY)."""
    if environment.get("SAGEMAKER_PROGRAM") or environment.get("SAGEMAKER_SUBMIT_DIRECTORY"):
        return True
    for host, spec in (volumes or {}).items():
        bind = spec["bind"] if isinstance(spec, dict) else spec
        if bind == "/opt/ml":
            codes = [Path(host) / "model" / "code", *Path(host).glob("models/*/model/code")]
        elif bind == "/opt/ml/model":
            codes = [Path(host) / "code"]
        else:
            codes = []
        if any(code.is_dir() for code in codes):
            return True
    return False


def with_test_engine(environment, volumes) -> dict:
    """A server's environment with SM_VISION_ENGINE set to serving_engine(), unless the test
    sets an engine itself, asks for a precision the engine does not run (bf16 or fp16: a
    torch test), or the model comes with a user's script: its hooks get torch tensors
    whatever is asked (SM_VISION_ENGINE=onnxruntime refuses hooks on our own classifier, a
    unit test's case), so such a server is started as a user would, engine auto."""
    environment = dict(environment or {}) if not isinstance(environment, list) else dict(e.split("=", 1) for e in environment)
    engine, precision = serving_engine(), environment.get("SM_VISION_PRECISION", "auto")
    runs = ENGINE_PRECISIONS.get(engine, (precision,))
    if "SM_VISION_ENGINE" not in environment and precision in runs and not serves_user_script(environment, volumes):
        environment["SM_VISION_ENGINE"] = engine
    return environment


class Containers:
    """Starts containers with the test label and removes them at teardown."""

    def __init__(self, client):
        self.client = client
        self.started = []
        self.networks = []

    def run(self, image, command, **kwargs):
        kwargs.setdefault("detach", True)
        if list(command or ())[:1] == ["serve"]:
            kwargs["environment"] = with_test_engine(kwargs.get("environment"), kwargs.get("volumes"))
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
    """/ping 200, then no accuracy guard left running (wait_guard): a test's answers all
    come from the precision the server settled on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/ping", timeout=2).status_code == 200:
                wait_guard(base_url, container, max(1.0, deadline - time.monotonic()))
                return
        except requests.ConnectionError:
            pass
        container.reload()
        if container.status == "exited":
            raise AssertionError("server exited:\n" + container.logs().decode(errors="replace"))
        time.sleep(0.5)
    raise AssertionError("/ping never answered 200:\n" + container.logs().decode(errors="replace"))


GUARD_RUNNING = re.compile(r'^sm_vision_model_guard\{[^}]*state="running"[^}]*\} 1\.0$', re.MULTILINE)


def wait_guard(base_url: str, container, timeout: float = 180) -> str:
    """Wait until no model's accuracy guard runs in the background any more (ONNX Runtime
    int8 is served once its guard passes; fp32 until then); /metrics' text then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(f"{base_url}/metrics", timeout=10)
        if response.status_code != 200 or not GUARD_RUNNING.search(response.text):  # metrics off: nothing to wait on
            return response.text
        container.reload()
        if container.status == "exited":
            raise AssertionError("server exited:\n" + container.logs().decode(errors="replace"))
        time.sleep(0.2)
    raise AssertionError("the accuracy guard was still running:\n" + container.logs().decode(errors="replace"))


def gateway(network) -> str:
    network.reload()
    return network.attrs["IPAM"]["Config"][0]["Gateway"]
