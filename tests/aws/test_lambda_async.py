"""The Lambda bridge in front of an async endpoint (ASYNC_INFERENCE=true): an S3 input
under ALLOWED_S3_PREFIX is queued with InvokeEndpointAsync (never downloaded by the
bridge) and the answer says where the result will appear."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.support.aws import LAMBDA_ENDPOINT

OUT = "s3://smv-bucket/shapes/async-out/abc.out"
FAIL = "s3://smv-bucket/shapes/async-out/failures/abc-error.out"


@pytest.fixture
def async_config(bridge_config):
    return dataclasses.replace(bridge_config, async_inference=True)


def test_s3_input_is_queued_and_the_output_location_returned(call_bridge, runtime_stub, async_config):
    runtime_stub.add_response(
        "invoke_endpoint_async",
        {"InferenceId": "abc", "OutputLocation": OUT, "FailureLocation": FAIL},
        {
            "EndpointName": LAMBDA_ENDPOINT,
            "InputLocation": "s3://smv-bucket/shapes/inference/bin-7.JPG",
            "ContentType": "image/jpeg",
            "Accept": "application/json",
        },
    )
    status, body = call_bridge({"s3_uri": "s3://smv-bucket/shapes/inference/bin-7.JPG"}, async_config)
    assert status == 202
    assert body == {"inference_id": "abc", "output_location": OUT, "failure_location": FAIL}


def test_api_gateway_event_reaches_the_async_endpoint(call_bridge, runtime_stub, async_config):
    runtime_stub.add_response(
        "invoke_endpoint_async",
        {"InferenceId": "abc", "OutputLocation": OUT},
        {
            "EndpointName": LAMBDA_ENDPOINT,
            "InputLocation": "s3://smv-bucket/shapes/inference/a.png",
            "ContentType": "image/png",
            "Accept": "application/json",
        },
    )
    event = {
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"s3_uri": "s3://smv-bucket/shapes/inference/a.png"}),
    }
    status, body = call_bridge(event, async_config)
    assert (status, body["output_location"]) == (202, OUT)


@pytest.mark.parametrize(
    "event, status, message",
    [
        ({"url": "https://example.com/a.jpg"}, 400, "asynchronous"),
        ({"image": "aGVsbG8="}, 400, "asynchronous"),
        ({"s3_uri": "s3://other-bucket/shapes/inference/a.jpg"}, 403, "outside"),
        ({"s3_uri": "s3://smv-bucket/shapes/inference/../models/a.jpg"}, 403, "outside"),
        ({"s3_uri": "s3://smv-bucket/shapes/inference/a.gif"}, 415, ".jpg"),
    ],
)
def test_refused_async_inputs_make_no_call(call_bridge, async_config, event, status, message):
    got, body = call_bridge(event, async_config)  # no response stubbed: any AWS call fails the test
    assert got == status and message in body["error"], body


def test_async_flag_from_the_environment(bridge):
    assert bridge.Config.from_env({"ENDPOINT_NAME": "e", "ASYNC_INFERENCE": "true"}).async_inference is True
    assert bridge.Config.from_env({"ENDPOINT_NAME": "e"}).async_inference is False
