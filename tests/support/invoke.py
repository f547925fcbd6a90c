"""InvokeEndpoint as the SageMaker Runtime API has it, without AWS: botocore's own
serializer builds the request boto3's `invoke_endpoint(...)` sends (its headers: custom
attributes, inference id, target model, session id), and botocore's parser reads the
container's HTTP answer into the dict boto3 returns (`CustomAttributes`, ...).

SageMaker's front end passes those headers and the body to the container's
/invocations, and the container's response headers back; the tests post the same
request to the container directly."""

from __future__ import annotations

import botocore.session
import requests
from botocore import parsers, serialize

_MODEL = botocore.session.get_session().get_service_model("sagemaker-runtime")
_OPERATION = _MODEL.operation_model("InvokeEndpoint")


def invoke_endpoint(base_url: str, path: str = "/invocations", **params) -> tuple[dict, requests.Response]:
    """(boto3's response dict, the raw HTTP response) of invoke_endpoint(**params) answered
    by the container at base_url (EndpointName defaults to "endpoint")."""
    params.setdefault("EndpointName", "endpoint")
    request = serialize.create_serializer(_MODEL.metadata["protocol"], include_validation=True).serialize_to_request(params, _OPERATION)
    answer = requests.post(base_url + path, data=request["body"], headers=request["headers"], timeout=60)
    parsed = parsers.create_parser(_MODEL.metadata["protocol"]).parse(
        {"headers": answer.headers, "body": answer.content, "status_code": answer.status_code}, _OPERATION.output_shape
    )
    return parsed, answer
