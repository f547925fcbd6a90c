#!/usr/bin/env bash
# Every test, on a fresh Debian machine or a developer's:
#   0. ruff lint and format check,
#   1. unit tests inside the image's `test` stage (exactly the image's torch),
#   2. host-side tests (AWS code with Stubber/moto, shell scripts with fake tools),
#   3. container tests driving the real image through the docker SDK and HTTP (the
#      host tools and SDK 3, requirements-test.txt), then the serve tests on the model
#      store's models again with our classifier on ONNX Runtime (SMV_TEST_ENGINE,
#      docs/testing.md),
#   4. the SageMaker SDK 2.x tests in their own venv (requirements-sdk2.txt): notebooks
#      still on 2.x must keep working against the image, and 2.x cannot share a venv
#      with SDK 3.
# The host needs no torch: venvs with those requirements are enough.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-sagemaker-vision:test}"
UNIT_IMAGE="${IMAGE%%:*}:unit"
IMAGE_CPU="${IMAGE_CPU:-$IMAGE-cpu}"  # the torch-free serving image (docker/build.sh --cpu)
VENV="${VENV:-.venv}"
VENV_SDK2="${VENV_SDK2:-.venv-sdk2}"
SDK2_TESTS=(tests/container/test_sagemaker_local.py tests/container/test_serve_aws_toolkit.py)
# The serve tests that serve the model store's models: run again on ONNX Runtime.
ENGINE_PASS_TESTS=(tests/container/test_serve.py tests/container/test_serve_mme.py tests/container/test_request_limits.py
  tests/container/test_security.py tests/container/test_observability.py tests/container/test_drain.py)

local_test/bootstrap_host.sh
# SDK 3 cannot be installed over 2.x in place (pip deletes files the two releases
# share), so a venv made before the tools moved to SDK 3 is made afresh.
if "$VENV/bin/pip" show sagemaker 2>/dev/null | grep -q '^Version: 2\.'; then
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r requirements-test.txt
# The trainer's torch-free schema and the host tools, as the tools import them.
"$VENV/bin/pip" install -q --no-deps -e . -e aws/
if [ ! -x "$VENV_SDK2/bin/python" ]; then
  python3 -m venv "$VENV_SDK2"
fi
# Only the SDK and the test harness: these tests drive the image as a notebook would, not the tools.
"$VENV_SDK2/bin/pip" install -q -r requirements-sdk2.txt

echo "=== lint and format (ruff)"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

echo "=== building $IMAGE, $IMAGE_CPU and the unit-test stage"
docker/build.sh "$IMAGE" --quiet >/dev/null
docker/build.sh --cpu "$IMAGE_CPU" --quiet >/dev/null
TARGET=test docker/build.sh "$UNIT_IMAGE" --quiet >/dev/null

echo "=== unit tests (inside the image)"
/usr/bin/docker run --rm "$UNIT_IMAGE" python -m pytest -q -p no:cacheprovider tests/unit

echo "=== host-side and container tests (through the real image)"
host_dirs=()
for dir in tests/host tests/aws tests/container; do
  [ -d "$dir" ] && host_dirs+=("$dir")
done
ignore=()
for test in "${SDK2_TESTS[@]}"; do ignore+=("--ignore=$test"); done
IMAGE="$IMAGE" IMAGE_CPU="$IMAGE_CPU" SKIP_BUILD=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${ignore[@]}" "${host_dirs[@]}" "$@"

# The serve tests on the model store's models again, with our classifier on ONNX Runtime
# (the first pass serves those models on torch): docs/testing.md, "Each engine".
echo "=== the serve tests again, served on ONNX Runtime (SMV_TEST_ENGINE=onnxruntime)"
SMV_TEST_ENGINE=onnxruntime IMAGE="$IMAGE" IMAGE_CPU="$IMAGE_CPU" SKIP_BUILD=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  -k "not test_trained_model_predicts_shapes" "${ENGINE_PASS_TESTS[@]}" "$@"

echo "=== SageMaker SDK 2.x notebooks against the image (Estimator/Model local mode, PyTorchModel)"
IMAGE="$IMAGE" SKIP_BUILD=1 "$VENV_SDK2/bin/python" -m pytest -q -p no:cacheprovider "${SDK2_TESTS[@]}" "$@"
