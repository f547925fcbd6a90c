"""The request context a user's inference.py gets, through the real image: hooks whose
last parameter is `context` see what an invoke_endpoint-shaped request sent (custom
attributes, inference id, target model, session id, request id, types) and set the
response's custom attributes, which boto3's parser returns as CustomAttributes; a script
without `context` answers as before. Single model (batching on and off), multi-model,
batch transform (the job's SM_VISION_CUSTOM_ATTRIBUTES) and `serve --backend mms`."""

from __future__ import annotations

import json
import os

import pytest
import requests

from tests.support.containers import opt_ml, wait_ping
from tests.support.endpoint import post, start_server, until_ok
from tests.support.invoke import invoke_endpoint

# Every hook takes the context; model_fn's has no request (its request fields are None).
WITH_CONTEXT = r"""
import json

def model_fn(model_dir, context):
    return {"loaded_with": [context.model_dir, context.custom_attributes, context.request_id]}

def input_fn(body, content_type, context):
    return {"bytes": len(body), "content_type": content_type}

def predict_fn(data, model, context):
    return {**data, **model, "seen": {
        "custom_attributes": context.custom_attributes, "attributes": context.attributes,
        "inference_id": context.inference_id, "target_model": context.target_model,
        "session_id": context.session_id, "request_id": context.request_id,
        "get_request_id": context.get_request_id(0), "content_type": context.content_type,
        "accept": context.accept,
        "header": context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes"),
    }}

def output_fn(prediction, accept, context):
    context.set_custom_attributes("answered=" + str(prediction["seen"]["attributes"].get("tenant")))
    context.set_response_header(0, "X-Amzn-SageMaker-New-Session-Id", "session-2")
    return json.dumps(prediction), accept
"""

# The same script as written before contexts existed.
WITHOUT_CONTEXT = r"""
import json

def model_fn(model_dir):
    return "old"

def input_fn(body, content_type):
    return len(body)

def predict_fn(data, model):
    return {"model": model, "bytes": data}

def output_fn(prediction, accept):
    return json.dumps(prediction), accept
"""

BODY = b"\x89PNG not really an image: the hooks only count it"


def script_root(tmp_path, script: str, under: str = "model"):
    root = opt_ml(tmp_path)
    code = root / under / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(script)
    for path in (root / under).rglob("*"):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    os.chmod(root / under, 0o777)
    return root


def boto3_shaped(base: str, path: str = "/invocations", **params) -> tuple[dict, requests.Response, dict]:
    params = {"Body": BODY, "ContentType": "image/png", "Accept": "application/json", **params}
    parsed, answer = invoke_endpoint(base, path, **params)
    assert answer.status_code == 200, answer.text
    return parsed, answer, json.loads(parsed["Body"])  # the blob, as botocore parsed it from the bytes


@pytest.mark.parametrize("batching", ["on", "off"])
def test_hooks_see_the_request_and_answer_custom_attributes(containers, image, tmp_path, batching):
    root = script_root(tmp_path, WITH_CONTEXT)
    container, base = start_server(containers, image, root, env={"SM_VISION_BATCHING": batching})
    wait_ping(base, container)
    attributes = "tenant=acme, explain=shap;trace-7"  # explain=shap is the user's to read: no 400 under a user's hooks
    parsed, answer, result = boto3_shaped(base, CustomAttributes=attributes, InferenceId="inference-1", SessionId="session-1")
    seen = result["seen"]
    assert seen == {
        "custom_attributes": attributes,
        "attributes": {"tenant": "acme", "explain": "shap"},
        "inference_id": "inference-1",
        "target_model": None,
        "session_id": "session-1",
        "request_id": answer.headers["X-Amzn-RequestId"],
        "get_request_id": answer.headers["X-Amzn-RequestId"],
        "content_type": "image/png",
        "accept": "application/json",
        "header": attributes,
    }
    assert result["bytes"] == len(BODY) and result["loaded_with"] == ["/opt/ml/model", None, None]
    assert parsed["CustomAttributes"] == "answered=acme" and parsed["NewSessionId"] == "session-2"
    assert parsed["ContentType"] == "application/json"

    # The client's request id is the one the hook sees; no attributes: None.
    _, answer, result = boto3_shaped(base)
    assert result["seen"]["custom_attributes"] is None and result["seen"]["attributes"] == {}
    again = post(base, BODY, "image/png", headers={"X-Amzn-RequestId": "client-id-1"})
    assert again.json()["seen"]["request_id"] == "client-id-1" == again.headers["X-Amzn-RequestId"]
    assert "Traceback" not in container.logs().decode()


@pytest.mark.parametrize("batching", ["on", "off"])
def test_old_style_hooks_answer_as_before(containers, image, tmp_path, batching):
    root = script_root(tmp_path, WITHOUT_CONTEXT)
    container, base = start_server(containers, image, root, env={"SM_VISION_BATCHING": batching})
    wait_ping(base, container)
    parsed, answer, result = boto3_shaped(base, CustomAttributes="tenant=acme", InferenceId="inference-1")
    assert result == {"model": "old", "bytes": len(BODY)}
    assert "CustomAttributes" not in parsed
    assert not [name for name in answer.headers if name.lower().startswith("x-amzn-sagemaker")]


def test_multi_model_and_batch_transform_contexts(containers, image, tmp_path):
    root = script_root(tmp_path / "mme", WITH_CONTEXT, under="models/hooked/model")
    container, base = start_server(containers, image, root, env={"SAGEMAKER_MULTI_MODEL": "true"})
    wait_ping(base, container)
    loaded = requests.post(base + "/models", json={"model_name": "hooked", "url": "/opt/ml/models/hooked/model"}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    parsed, _, result = boto3_shaped(base, CustomAttributes="tenant=mme", TargetModel="hooked")
    assert result["seen"]["target_model"] == "hooked" and parsed["CustomAttributes"] == "answered=mme"
    parsed, _, result = boto3_shaped(base, "/models/hooked/invoke", CustomAttributes="tenant=path")
    assert result["seen"]["target_model"] == "hooked" and parsed["CustomAttributes"] == "answered=path"
    container.remove(force=True)

    # Batch transform: no per-request header; the job's Environment gives the attributes.
    root = script_root(tmp_path / "batch", WITH_CONTEXT)
    env = {"SAGEMAKER_BATCH": "true", "SM_VISION_CUSTOM_ATTRIBUTES": "tenant=job,overlay=false"}
    container, base = start_server(containers, image, root, env=env)
    wait_ping(base, container)
    parsed, _, result = boto3_shaped(base)
    assert result["seen"]["custom_attributes"] == "tenant=job,overlay=false"
    assert result["seen"]["attributes"] == {"tenant": "job", "overlay": "false"}
    assert parsed["CustomAttributes"] == "answered=job"
    _, _, result = boto3_shaped(base, CustomAttributes="tenant=header")  # a header wins key by key
    assert result["seen"]["attributes"] == {"tenant": "header", "overlay": "false"}


def test_mms_backend_context(containers, image, tmp_path):
    root = script_root(tmp_path, WITH_CONTEXT)
    container, base = start_server(containers, image, root, command=("serve", "--backend", "mms"))
    wait_ping(base, container, timeout=180)
    until_ok(lambda: post(base, BODY, "image/png"))  # MMS answers /ping before its worker has loaded the model
    parsed, answer, result = boto3_shaped(base, CustomAttributes="tenant=mms", InferenceId="inference-2", SessionId="session-3")
    seen = result["seen"]
    assert seen["custom_attributes"] == "tenant=mms" and seen["inference_id"] == "inference-2" and seen["session_id"] == "session-3"
    assert seen["request_id"] and seen["content_type"] == "image/png" and seen["accept"] == "application/json"
    assert parsed["CustomAttributes"] == "answered=mms" and parsed["NewSessionId"] == "session-2"
