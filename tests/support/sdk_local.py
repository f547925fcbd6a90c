"""What the SageMaker SDK local-mode tests share, SDK 2.x and SDK 3 alike (each runs in
its own venv): the role local mode never assumes, the SDK config that turns telemetry
off, the docker network local mode creates, and how SDK 2.x names its containers.
Standard library only; the fixtures (sdk_local_mode, local_session) are in
tests/container/conftest.py and import the SDK only when a test asks for them."""

from __future__ import annotations

import re

LOCAL_ROLE = "arn:aws:iam::111111111111:role/local-mode"  # local mode never assumes it
NETWORK = "sagemaker-local"
TELEMETRY_OPT_OUT = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
# SDK 2.x local mode's containers: <10 chars>-algo-N-<5 chars>, N the host number.
LOCAL_CONTAINER = re.compile(r"^[a-z0-9]{10}-algo-(\d+)-[a-z0-9]{5}$")
