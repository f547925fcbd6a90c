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

import json
import math
import tarfile
from pathlib import Path

import pytest

from tests.support.payloads import png_bytes
from tests.support.sdk_local import LOCAL_CONTAINER, LOCAL_ROLE
from train import synthetic

pytestmark = pytest.mark.container


def test_fit_two_hosts_then_deploy_predict_and_delete(image, local_session, tmp_path):
    from sagemaker.estimator import Estimator

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
    predictor = deploy_locally(image, model_tar, session, "smv-local-test")
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


# A user's inference.py whose hooks take the request context (docs/serving.md).
CONTEXT_HOOKS = r"""
import json

def model_fn(model_dir, context):
    return "loaded"

def input_fn(body, content_type, context):
    return body

def predict_fn(data, model, context):
    return {"bytes": len(data), "custom_attributes": context.custom_attributes, "attributes": context.attributes,
            "inference_id": context.inference_id, "content_type": context.content_type, "accept": context.accept}

def output_fn(prediction, accept, context):
    context.set_custom_attributes("served-for=" + str(prediction["attributes"].get("tenant")))
    return json.dumps(prediction), accept
"""


def test_predictor_custom_attributes_reach_the_hooks_and_come_back(image, local_session, tmp_path):
    """An SDK 2.x Predictor on a local endpoint sends CustomAttributes and InferenceId
    (Predictor.predict's arguments) to hooks that take `context`; the answer's custom
    attributes come back to the client. SDK 2.x hands them to no caller by name:
    Predictor.predict returns only the deserialized body (sagemaker/base_predictor.py,
    predict and _handle_response), and local mode's invoke_endpoint returns only Body
    and ContentType (sagemaker/local/local_session.py, LocalSagemakerRuntimeClient), with
    Body the HTTP response, whose headers are read here."""

    code = tmp_path / "model" / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(CONTEXT_HOOKS)
    model_tar = tmp_path / "model.tar.gz"
    with tarfile.open(model_tar, "w:gz") as archive:
        archive.add(code, arcname="code")
    predictor = deploy_locally(image, model_tar, local_session, "smv-local-context")
    body = png_bytes(synthetic.make_image("red_circle"))
    try:
        seen = predictor.predict(body, custom_attributes="tenant=acme, trace-7", inference_id="inference-1")
        # The call Predictor.predict makes, with the response it gets.
        response = local_session.sagemaker_runtime_client.invoke_endpoint(
            EndpointName=predictor.endpoint_name,
            Body=body,
            ContentType="image/png",
            Accept="application/json",
            CustomAttributes="tenant=globex",
        )
        answered = response["Body"].headers.get("X-Amzn-SageMaker-Custom-Attributes")
        second = json.loads(response["Body"].read())
    finally:
        predictor.delete_model()
        predictor.delete_endpoint()
    assert seen == {
        "bytes": len(body),
        "custom_attributes": "tenant=acme, trace-7",
        "attributes": {"tenant": "acme"},
        "inference_id": "inference-1",
        "content_type": "image/png",
        "accept": "application/json",
    }
    assert answered == "served-for=globex" and second["attributes"] == {"tenant": "globex"} and second["inference_id"] is None
    running = [name for name, c in local_session.started_containers().items() if c.status == "running"]
    assert running == [], f"serving containers still running after delete: {running}"


def deploy_locally(image: str, model_tar: Path, session, endpoint_name: str):
    """model.tar.gz on a local endpoint of the image, as a notebook deploys it: PNG in, JSON out."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer

    model = Model(image_uri=image, model_data=model_tar.as_uri(), role=LOCAL_ROLE, sagemaker_session=session, predictor_cls=Predictor)
    return model.deploy(
        initial_instance_count=1,
        instance_type="local",
        endpoint_name=endpoint_name,
        serializer=IdentitySerializer("image/png"),
        deserializer=JSONDeserializer(),
    )
