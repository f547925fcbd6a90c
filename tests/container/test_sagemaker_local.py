"""The real image through the SageMaker Python SDK's local mode, as `--local` runs it:
Estimator.fit on two hosts (DDP over gloo between containers algo-1/algo-2), then the
CLI's local deploy (Model.deploy, predict one image, delete model then endpoint).

The SDK's job status is only the first container's exit code, so each host's own exit
code and log are checked here. Everything local mode starts is removed afterwards,
also on failure: containers named <10 chars>-algo-N-<5 chars> of the test image that
did not exist before, and the sagemaker-local network if this test created it.
"""

from __future__ import annotations

import json
import math
import socket
import tarfile
from pathlib import Path

import pytest
from smvision_aws import cli, local_mode
from smvision_aws.sessions import make_session
from smvision_aws.training import TrainSpec, build_estimator

from tests.container.conftest import png_bytes
from train import synthetic

pytestmark = pytest.mark.container
NETWORK = "sagemaker-local"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_mode_env(monkeypatch, docker_client, image):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local-mode-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-mode-test")
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)

    def ours():
        return {
            c.name: c
            for c in docker_client.containers.list(all=True)
            if local_mode._NAME.match(c.name) and c.attrs["Config"]["Image"] == image
        }

    before = set(ours())
    had_network = bool(docker_client.networks.list(names=[NETWORK]))
    yield ours, before
    for name, container in ours().items():
        if name not in before:
            container.remove(force=True)
    if not had_network:
        for network in docker_client.networks.list(names=[NETWORK]):
            network.reload()
            if not network.containers:
                network.remove()


def test_fit_two_hosts_then_deploy_predict_and_delete(image, docker_client, local_mode_env, tmp_path):
    ours, before = local_mode_env
    data = tmp_path / "shapes"
    synthetic.make_shapes(data, {"train": 16, "valid": 6, "test": 6}, size=64, seed=1)
    out = tmp_path / "output"
    out.mkdir()

    # --- fit on two hosts through the SDK ---
    session = make_session(local=True)
    spec = TrainSpec(
        image_uri=image,
        role=cli.LOCAL_ROLE,
        instance_type="local",
        instance_count=2,
        hyperparameters={"epochs": "2", "image-size": "64", "batch-size": "8", "num-workers": "0", "lr": "0.003"},
        output_path=out.as_uri(),
        base_job_name="smv-local-test",
    )
    estimator = build_estimator(spec, session, local=True)
    estimator.fit({"training": data.as_uri()}, job_name="smv-local-test-fit")

    hosts = local_mode.job_hosts(session, "smv-local-test-fit")
    assert len(hosts) == 2 and {h.rsplit("-", 1)[0] for h in hosts} == {"algo-1", "algo-2"}
    containers = {n: c for n, c in ours().items() if n not in before}
    for host in hosts:
        matches = [c for n, c in containers.items() if n.endswith("-" + host)]
        assert len(matches) == 1, f"no container left for {host}: {sorted(containers)}"
        container = matches[0]
        container.reload()
        logs = container.logs().decode(errors="replace")
        assert container.attrs["State"]["ExitCode"] == 0, f"{host} failed:\n{logs[-3000:]}"
        assert "world size 2" in logs, f"{host} did not join the 2-host job:\n{logs[-3000:]}"
    primary = next(c for n, c in containers.items() if "-algo-1-" in n).logs().decode(errors="replace")
    assert "val_macro_f1=" in primary and "test_macro_f1=" in primary
    # The same per-host check the CLI's `train --local` applies.
    local_mode.check_hosts(local_mode.host_exit_codes(hosts))

    model_tar = out / "smv-local-test-fit" / "model.tar.gz"
    if not model_tar.exists():
        model_tar = out / "model.tar.gz"
    assert estimator.model_data == model_tar.as_uri(), estimator.model_data
    with tarfile.open(model_tar) as archive:
        names = {Path(n).name for n in archive.getnames()}
    assert {"model.pt", "model_spec.json"} <= names, names
    local_mode.remove_containers([n for n in containers])

    # --- deploy, predict one image, delete model then endpoint (the CLI's --local path) ---
    image_file = tmp_path / "red_circle.png"
    image_file.write_bytes(png_bytes(synthetic.make_image("red_circle")))
    args = cli.get_args_parser().parse_args(
        [
            "deploy",
            "--local",
            "--image",
            image,
            "--model-data",
            model_tar.as_uri(),
            "--endpoint-name",
            "smv-local-test",
            "--smoke-image",
            str(image_file),
            "--serving-port",
            str(_free_port()),
        ]
    )
    result = cli.cmd_deploy(args, session=make_session(local=True, serving_port=args.serving_port))
    prediction = result["smoke_prediction"]
    assert prediction["predicted_label"] in synthetic.SHAPE_CLASSES, prediction
    probabilities = prediction["probabilities"]
    assert set(probabilities) == set(synthetic.SHAPE_CLASSES)
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-3)
    assert prediction["confidence"] == pytest.approx(max(probabilities.values()), abs=1e-6)
    assert result["deleted"] is True
    running = [n for n, c in ours().items() if n not in before and c.status == "running"]
    assert running == [], f"serving containers still running after delete: {running}"
    json.dumps(result)  # what the CLI prints
