"""The real image under SageMaker Python SDK 2.x local mode, driven the way a 2.x
notebook drives it (no smvision-aws tools, which need SDK 3): `Estimator.fit` on two
hosts (DDP over gloo between containers algo-1/algo-2), then `Model.deploy` with
instance_type "local", one prediction, and delete model then endpoint.

Runs in the SDK 2.x venv (requirements-sdk2.txt; tests/run_all.sh makes it). The SDK's
job status is only the first container's exit code, so each host's own exit code and
log are checked here. Everything local mode starts is removed afterwards, also on
failure: containers named <10 chars>-algo-N-<5 chars> of the test image that did not
exist before, and the sagemaker-local network if this test created it.
"""

from __future__ import annotations

import math
import tarfile
from pathlib import Path

import pytest

from tests.support.payloads import png_bytes
from tests.support.sdk_local import LOCAL_CONTAINER, LOCAL_ROLE
from train import synthetic

pytestmark = pytest.mark.container


def test_fit_two_hosts_then_deploy_predict_and_delete(image, local_session, tmp_path):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.estimator import Estimator
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    new_containers = local_session.started_containers
    data = tmp_path / "shapes"
    synthetic.make_shapes(data, {"train": 16, "valid": 6, "test": 6}, size=64, seed=1)
    out = tmp_path / "output"
    out.mkdir()
    session = local_session

    # --- fit on two hosts, as a notebook does ---
    estimator = Estimator(
        image_uri=image,
        role=LOCAL_ROLE,
        instance_count=2,
        instance_type="local",
        hyperparameters={"epochs": 2, "image-size": 64, "batch-size": 8, "num-workers": 0, "lr": 0.003},
        output_path=out.as_uri(),
        sagemaker_session=session,
    )
    estimator.fit({"training": data.as_uri()}, job_name="smv-local-test-fit")

    hosts = {int(LOCAL_CONTAINER.match(name).group(1)): c for name, c in new_containers().items()}
    assert sorted(hosts) == [1, 2], f"expected algo-1 and algo-2: {sorted(new_containers())}"
    for number, container in hosts.items():
        container.reload()
        logs = container.logs().decode(errors="replace")
        assert container.attrs["State"]["ExitCode"] == 0, f"algo-{number} failed:\n{logs[-3000:]}"
        assert "world size 2" in logs, f"algo-{number} did not join the 2-host job:\n{logs[-3000:]}"
    primary = hosts[1].logs().decode(errors="replace")
    assert "val_macro_f1=" in primary and "test_macro_f1=" in primary

    model_tar = out / "smv-local-test-fit" / "model.tar.gz"
    if not model_tar.exists():
        model_tar = out / "model.tar.gz"
    assert estimator.model_data == model_tar.as_uri(), estimator.model_data
    with tarfile.open(model_tar) as archive:
        names = {Path(n).name for n in archive.getnames()}
    assert {"model.pt", "model_spec.json"} <= names, names
    for container in hosts.values():
        container.remove(force=True)

    # --- deploy the artifact, predict one image, delete model then endpoint ---
    model = Model(image_uri=image, model_data=model_tar.as_uri(), role=LOCAL_ROLE, sagemaker_session=session, predictor_cls=Predictor)
    predictor = model.deploy(
        initial_instance_count=1,
        instance_type="local",
        endpoint_name="smv-local-test",
        serializer=IdentitySerializer("image/png"),
        deserializer=JSONDeserializer(),
    )
    try:
        prediction = predictor.predict(png_bytes(synthetic.make_image("red_circle")), initial_args={"Accept": "application/json"})
    finally:
        # A local endpoint lives in this process; local mode wants the model deleted first.
        predictor.delete_model()
        predictor.delete_endpoint()
    assert prediction["predicted_label"] in synthetic.SHAPE_CLASSES, prediction
    probabilities = prediction["probabilities"]
    assert set(probabilities) == set(synthetic.SHAPE_CLASSES)
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-3)
    assert prediction["confidence"] == pytest.approx(max(probabilities.values()), abs=1e-6)
    running = [name for name, c in new_containers().items() if c.status == "running"]
    assert running == [], f"serving containers still running after delete: {running}"
