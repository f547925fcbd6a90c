"""Per-request options through custom attributes (container.attributes), what they do to
our classifier's answers in-process (serve.extras: Grad-CAM, flip TTA, abstaining), the
temperature in the served probabilities, and the request context users' hooks get
(serve.hooks.Context). The same behaviour through the real image over HTTP is in
tests/container/test_serve_trust.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from container import ConfigError, ServeConfig
from container.attributes import RequestOptions, parse_pairs, request_defaults
from serve.engines import load_classifier
from serve.hooks import Context
from tests.support.asgi import asgi_call, request, wait_ready, with_lifespan
from tests.support.payloads import png_bytes
from vision.artifact import ModelSpec
from vision.features import Embedder, compute_baseline
from vision.models import build_model

HEADER = "X-Amzn-SageMaker-Custom-Attributes"


# --- parsing -----------------------------------------------------------------------


def test_pairs_are_split_on_commas_and_semicolons_and_tokens_are_kept_out():
    text = " explain=gradcam ; overlay = false,trace-1234, mine=a=b ,"
    assert parse_pairs(text) == [("explain", "gradcam"), ("overlay", "false"), ("mine", "a=b")]
    assert parse_pairs(None) == [] and parse_pairs("") == []


def test_options_are_parsed_strictly_and_others_keys_left_alone():
    options = RequestOptions().updated(parse_pairs("Explain=GradCAM,overlay=no,abstain_below=0.25,ood=1,team=vision,c000b4f9"))
    assert options == RequestOptions(explain="gradcam", overlay=False, abstain_below=0.25, ood=True)
    assert RequestOptions().updated([("tta", "flip")]).tta == "flip"
    assert RequestOptions().updated([("output", "embedding")]).features
    # A request turns off what the job asked for, key by key.
    job = request_defaults("explain=gradcam,abstain_below=0.5", "SM_VISION_CUSTOM_ATTRIBUTES")
    assert job.updated([("explain", "none")]) == RequestOptions(abstain_below=0.5)
    assert job.updated([("abstain_below", "0")]).abstain_below is None  # 0: never abstain
    assert RequestOptions().plain_forward and RequestOptions(abstain_below=0.5).plain_forward
    assert not RequestOptions(tta="flip").plain_forward and not RequestOptions(tta="flip").extra_fields


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explain=shap", "explain='shap': choose gradcam or none"),
        ("overlay=perhaps", "overlay='perhaps': expected true/false"),
        ("output=logits", "output='logits': choose prediction or embedding"),
        ("tta=rotate", "tta='rotate': choose flip or none"),
        ("abstain_below=1.5", "abstain_below=1.5: must be <= 1.0"),
        ("abstain_below=high", "abstain_below='high': expected a number"),
        ("explian=gradcam", "unknown key 'explian'; did you mean 'explain'?"),
        ("explain=gradcam,explain=none", "explain is given twice"),
        ("tta=flip,explain=gradcam", "tta=flip averages probabilities only"),
        ("tta=flip,ood=true", "tta=flip averages probabilities only"),
        ("x=" + "a" * 1100, "1102 characters; custom attributes hold at most 1024"),
        ("explain=gradcäm", "visible US-ASCII characters only"),
    ],
)
def test_bad_options_name_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=f"^X-Amzn-SageMaker-Custom-Attributes: .*{message_pattern(message)}"):
        RequestOptions().updated(parse_pairs(text))


def message_pattern(message: str) -> str:
    return "".join("\\" + char if char in ".?()[]+*^$|" else char for char in message)


def test_the_job_wide_setting_is_checked_at_start_up():
    assert ServeConfig(custom_attributes="explain=gradcam,overlay=false").request_defaults == RequestOptions(
        explain="gradcam", overlay=False
    )
    with pytest.raises(ConfigError, match="SM_VISION_CUSTOM_ATTRIBUTES: tta='twice'"):
        ServeConfig.from_env({"SM_VISION_CUSTOM_ATTRIBUTES": "tta=twice"})


def test_hooks_may_set_x_response_headers_only():
    context = Context("model", "/opt/ml/model", None)
    context.set_custom_attributes("reviewed=yes")
    context.set_response_header(0, "X-Amzn-SageMaker-New-Session-Id", "s-1; Expires=2030-01-01T00:00:00Z")
    assert context.response_headers == {
        "X-Amzn-SageMaker-Custom-Attributes": "reviewed=yes",
        "X-Amzn-SageMaker-New-Session-Id": "s-1; Expires=2030-01-01T00:00:00Z",
    }
    for name in ("Content-Type", "X-Amzn-RequestId", "x-request-id", "Set-Cookie", "X-Bad Name"):
        with pytest.raises(ValueError, match="a hook may set X- headers"):
            context.set_response_header(0, name, "v")
    for value in ("a\r\nX-Injected: 1", "é", "a" * 1025):
        with pytest.raises(ValueError, match="at most 1024 visible US-ASCII"):
            context.set_custom_attributes(value)
    assert context.get_request_id() is None and context.custom_attributes is None  # no request at load time


# --- the temperature ---------------------------------------------------------------


def save_model(directory, temperature: float = 1.0, size: int = 64):
    directory.mkdir()
    torch.manual_seed(0)
    torch.save(build_model("resnet18", 3).state_dict(), directory / "model.pt")
    ModelSpec("resnet18", ("a", "b", "c"), size, size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), temperature=temperature).save(directory)
    return directory


def test_served_probabilities_are_divided_by_the_temperature(tmp_path):
    plain = load_classifier(save_model(tmp_path / "plain"), "cpu", "fp32")
    scaled = load_classifier(save_model(tmp_path / "scaled", temperature=2.5), "cpu", "fp32")
    batch = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        logits = plain.module(plain.prepare(batch)).float()
    # T = 1: the logits' softmax as they are (vision.scores: numpy's, for every engine)
    assert torch.allclose(plain.probabilities(batch), torch.softmax(logits, dim=1), atol=1e-6)
    assert torch.allclose(scaled.probabilities(batch), torch.softmax(logits / 2.5, dim=1), atol=1e-6)
    assert torch.equal(scaled.probabilities(batch).argmax(1), plain.probabilities(batch).argmax(1))


# --- through the app, in-process -----------------------------------------------------


def run_app(serve_app, model_dir, requests, **settings):
    """[(status, headers, body)] of `requests` ((headers, body) pairs) sent in turn."""
    app = serve_app(model_dir, **settings)

    async def body():
        assert await wait_ready(app) == 200
        return [
            await asgi_call(app, "POST", "/invocations", payload, [("Content-Type", "image/png"), *headers])
            for headers, payload in requests
        ]

    return asyncio.run(with_lifespan(app, body))


def image(seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    return png_bytes(Image.fromarray(torch.randint(0, 256, (64, 64, 3), generator=generator, dtype=torch.uint8).numpy()))


@pytest.mark.parametrize("batching", ["on", "off"])
def test_explain_tta_and_abstain_in_process(tmp_path, serve_app, batching):
    model_dir = save_model(tmp_path / "model", temperature=1.7)
    png, mirrored = image(1), None
    with Image.open(io.BytesIO(png)) as opened:
        mirrored = png_bytes(opened.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    answers = run_app(
        serve_app,
        model_dir,
        [
            ((), png),
            (((HEADER, "explain=gradcam"),), png),
            (((HEADER, "explain=gradcam;overlay=false"),), png),
            (((HEADER, "tta=flip"),), png),
            ((), mirrored),
            (((HEADER, "abstain_below=1.0"),), png),
            (((HEADER, "explain=nope"),), png),
        ],
        batching=batching,
        precision="fp32",
    )
    statuses = [status for status, _, _ in answers]
    assert statuses == [200] * 6 + [400], answers[-1]
    plain, explained, no_overlay, averaged, mirror, abstained = (json.loads(body) for _, _, body in answers[:6])
    # Explained: the plain answer plus the explanation of its top class.
    assert {k: v for k, v in explained.items() if k != "explanation"} == plain
    explanation = explained["explanation"]
    assert explanation["method"] == "gradcam" and explanation["class"] == plain["predicted_label"]
    assert len(explanation["grid"]) == 2 and all(len(row) == 2 for row in explanation["grid"])  # resnet18 at 64 px
    assert all(0 <= value <= 1 for row in explanation["grid"] for value in row)
    with Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"]))) as overlay:
        assert overlay.format == "PNG" and overlay.size == (64, 64)
    assert "overlay_png" not in no_overlay["explanation"] and no_overlay["explanation"]["grid"] == explanation["grid"]
    # Flip TTA: the mean of the image's and its mirror's probabilities.
    for name, value in averaged["probabilities"].items():
        assert value == pytest.approx((plain["probabilities"][name] + mirror["probabilities"][name]) / 2, abs=1e-6)
    # Every answer is below 1.0: abstained, still naming its label and top-k.
    assert abstained == {**plain, "abstained": True}
    assert json.loads(answers[6][2]) == {"error": "X-Amzn-SageMaker-Custom-Attributes: explain='nope': choose gradcam or none"}


def test_a_model_grad_cam_cannot_explain_answers_400_and_fails_a_job_that_asks_for_it(tmp_path, serve_app):
    model_dir = save_model(tmp_path / "model", size=32)  # resnet18 at 32 px: layer4's map is 1x1
    (status, _, body), (plain_status, _, _) = run_app(serve_app, model_dir, [(((HEADER, "explain=gradcam"),), image(2)), ((), image(2))])
    assert status == 400 and "explain=gradcam is not available for this model" in json.loads(body)["error"]
    assert plain_status == 200
    app = serve_app(model_dir, custom_attributes="explain=gradcam")

    async def ping():
        return await wait_ready(app), await request(app, "GET", "/ping")

    ready, (_, reason) = asyncio.run(with_lifespan(app, ping))
    assert ready == 500 and b"SM_VISION_CUSTOM_ATTRIBUTES: explain=gradcam is not available" in reason


def add_baseline(model_dir, images: list[bytes]) -> None:
    """monitoring/ in the model directory, as `monitor baseline` makes it (vision.features)."""
    embedder = Embedder.load(model_dir, torch.device("cpu"))
    samples = [(Image.open(io.BytesIO(png)).convert("RGB"), "PNG", None) for png in images]
    compute_baseline(embedder, samples).save(model_dir)


@pytest.mark.parametrize("batching", ["on", "off"])
def test_embedding_and_ood_score_in_process(tmp_path, serve_app, batching):
    model_dir = save_model(tmp_path / "model")
    add_baseline(model_dir, [image(seed) for seed in range(100, 140)])
    png = image(3)
    npy = ((HEADER, "output=embedding"), ("Accept", "application/x-npy"))
    answers = run_app(
        serve_app,
        model_dir,
        [
            ((), png),
            (((HEADER, "output=embedding"),), png),
            (((HEADER, "output=embedding"),), png),
            (npy, png),
            (((HEADER, "ood=true"),), png),
            (((HEADER, "explain=gradcam,overlay=false,output=embedding,ood=true"),), png),
        ],
        batching=batching,
        precision="fp32",
    )
    assert [status for status, _, _ in answers] == [200] * 6
    plain, embedded, again = (json.loads(body) for _, _, body in answers[:3])
    assert {k: v for k, v in embedded.items() if k != "embedding"} == plain
    assert len(embedded["embedding"]) == 512 and embedded["embedding"] == again["embedding"]  # resnet18's fc reads 512
    # The vector is the classification head's input, as the monitor's Embedder computes it (fp32 here).
    expected = Embedder.load(model_dir, torch.device("cpu")).embed([Image.open(io.BytesIO(png)).convert("RGB")])[1][0]
    assert torch.allclose(torch.tensor(embedded["embedding"]), torch.from_numpy(expected), atol=1e-4)
    assert answers[3][1]["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(answers[3][2]))
    assert array.shape == (1, 512) and array.dtype == np.float32 and array[0].tolist() == embedded["embedding"]
    scored, everything = json.loads(answers[4][2]), json.loads(answers[5][2])
    ood = scored["ood"]
    assert 0 <= ood["percentile"] <= 100 and 0 < ood["p_value"] <= 1 and len(ood["baseline_id"]) == 16
    assert {k: v for k, v in scored.items() if k != "ood"} == plain
    assert everything["ood"] == ood and everything["embedding"] == embedded["embedding"]
    assert everything["explanation"]["class"] == plain["predicted_label"] and "overlay_png" not in everything["explanation"]


def test_an_ood_score_needs_a_baseline(tmp_path, serve_app):
    model_dir = save_model(tmp_path / "model")
    ((status, _, body),) = run_app(serve_app, model_dir, [(((HEADER, "ood=true"),), image(4))])
    assert status == 400 and "ood=true needs the model's monitoring baseline (monitoring/baseline.json)" in json.loads(body)["error"]
