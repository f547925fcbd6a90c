"""`smvision-aws deploy --local` and `transform --local` through the real image: the
image served as SageMaker hosting and batch transform run it (model.tar.gz extracted
to a read-only /opt/ml/model, `serve`, /ping, /invocations), with a model the image
trained. Each test checks that the serving container and the extracted model are gone
afterwards, also when the command fails.
"""

from __future__ import annotations

import json
import math
import tarfile
import tempfile
from pathlib import Path

import pytest
from smvision_aws import cli, local_hosting, local_mode
from smvision_aws.commands.endpoints import cmd_deploy, cmd_transform

from tests.support.net import free_port
from tests.support.payloads import png_bytes
from train import synthetic

pytestmark = pytest.mark.container


@pytest.fixture
def model_tar(trained_model, tmp_path) -> Path:
    """model.tar.gz as SageMaker packs /opt/ml/model: its files at the archive's root."""
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for item in sorted(trained_model.iterdir()):
            archive.add(item, arcname=item.name)
    return path


@pytest.fixture
def leaves_nothing(docker_client, image):
    """Fails the test if a local serving container or an extracted model stays behind
    (and removes such containers, so a failure does not leak them)."""
    scratch = Path(tempfile.gettempdir())

    def leftovers():
        containers = docker_client.containers.list(all=True, filters={"label": local_mode.LOCAL_LABEL})
        return {c.id for c in containers}, set(scratch.glob("smvision-model-*"))

    containers_before, models_before = leftovers()
    yield
    containers_after, models_after = leftovers()
    for cid in containers_after - containers_before:
        docker_client.containers.get(cid).remove(force=True)
    assert containers_after - containers_before == set(), "a local serving container was left behind"
    assert models_after - models_before == set(), "an extracted model was left behind"


def check_prediction(prediction: dict) -> None:
    assert prediction["predicted_label"] in synthetic.SHAPE_CLASSES, prediction
    probabilities = prediction["probabilities"]
    assert set(probabilities) == set(synthetic.SHAPE_CLASSES)
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-3)


def test_deploy_local_predicts_a_real_image_then_removes_everything(image, model_tar, leaves_nothing, tmp_path):
    picture = tmp_path / "red_circle.png"
    picture.write_bytes(png_bytes(synthetic.make_image("red_circle")))
    port = free_port()
    args = cli.get_args_parser().parse_args(
        ["deploy", "--local", "--image", image, "--model-data", model_tar.as_uri(), "--endpoint-name", "shapes-local"]
        + ["--smoke-image", str(picture), "--serving-port", str(port)]
    )
    result = cmd_deploy(args)
    check_prediction(result["smoke_prediction"])
    assert result["url"] == f"http://127.0.0.1:{port}" and result["deleted"] is True
    json.dumps(result)  # what the CLI prints


def test_a_failed_prediction_still_removes_the_container(image, model_tar, leaves_nothing, tmp_path):
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    args = cli.get_args_parser().parse_args(
        ["deploy", "--local", "--image", image, "--model-data", model_tar.as_uri(), "--endpoint-name", "e", "--smoke-image", str(garbage)]
        + ["--serving-port", str(free_port())]
    )
    with pytest.raises(local_mode.LocalJobError, match="/invocations answered 4"):
        cmd_deploy(args)


def test_transform_local_writes_one_answer_per_file_like_batch_transform(image, model_tar, leaves_nothing, tmp_path):
    inputs = tmp_path / "batch-in"
    (inputs / "more").mkdir(parents=True)
    pictures = {"red.png": "red_circle", "more/green.png": "green_square", "more/blue.png": "blue_triangle"}
    for name, shape in pictures.items():
        (inputs / name).write_bytes(png_bytes(synthetic.make_image(shape)))
    outputs = tmp_path / "batch-out"
    args = cli.get_args_parser().parse_args(
        ["transform", "--local", "--image", image, "--model-data", model_tar.as_uri(), "--content-type", "image/png"]
        + ["--input", inputs.as_uri(), "--output", outputs.as_uri(), "--max-concurrent", "2"]
    )
    result = cmd_transform(args)

    assert sorted(result["files"]) == sorted(f"{name}.out" for name in pictures)
    assert sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*") if p.is_file()) == sorted(result["files"])
    for name in pictures:
        text = (outputs / f"{name}.out").read_text()
        assert text.endswith("\n") and text.count("\n") == 1, repr(text)  # AssembleWith Line: one answer, one line
        check_prediction(json.loads(text))


def test_the_server_runs_as_a_batch_transform_container(image, model_tar, leaves_nothing):
    """SAGEMAKER_BATCH and the job's MaxConcurrentTransforms reach the container, which
    reports them on /execution-parameters as on AWS."""
    env = {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3", "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD"}
    with local_hosting.serving(image, model_tar, env, port=None) as endpoint:
        assert endpoint.execution_parameters() == {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 6}
