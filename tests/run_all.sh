#!/usr/bin/env bash
# Every test, on a fresh Debian machine or a developer's:
#   0. ruff lint and format check,
#   1. unit tests inside the image's `test` stage (exactly the image's torch),
#   2. host-side tests (AWS code with Stubber/moto, shell scripts with fake tools),
#   3. container tests driving the real image through the docker SDK and HTTP,
#   4. the SageMaker SDK 3 tests in their own venv (requirements-sdk3.txt): SDK 3 and
#      the 2.x pin of requirements-test.txt cannot share one.
# The host needs no torch: a venv with requirements-test.txt is enough.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-sagemaker-vision:test}"
UNIT_IMAGE="${IMAGE%%:*}:unit"
VENV="${VENV:-.venv}"
VENV_SDK3="${VENV_SDK3:-.venv-sdk3}"
SDK3_TESTS=(tests/container/test_sagemaker_local_sdk3.py tests/aws/test_pipeline.py)

local_test/bootstrap_host.sh
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r requirements-test.txt
# The trainer's torch-free schema and the host tools, as the tools import them.
"$VENV/bin/pip" install -q --no-deps -e . -e aws/
if [ ! -x "$VENV_SDK3/bin/python" ]; then
  python3 -m venv "$VENV_SDK3"
fi
"$VENV_SDK3/bin/pip" install -q -r requirements-sdk3.txt
"$VENV_SDK3/bin/pip" install -q --no-deps -e . -e aws/

echo "=== lint and format (ruff)"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

echo "=== building $IMAGE and the unit-test stage"
docker/build.sh "$IMAGE" --quiet >/dev/null
TARGET=test docker/build.sh "$UNIT_IMAGE" --quiet >/dev/null

echo "=== unit tests (inside the image)"
/usr/bin/docker run --rm "$UNIT_IMAGE" python -m pytest -q -p no:cacheprovider tests/unit

echo "=== host-side and container tests (through the real image)"
host_dirs=()
for dir in tests/host tests/aws tests/container; do
  [ -d "$dir" ] && host_dirs+=("$dir")
done
ignore=()
for test in "${SDK3_TESTS[@]}"; do ignore+=("--ignore=$test"); done
IMAGE="$IMAGE" SKIP_BUILD=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${ignore[@]}" "${host_dirs[@]}" "$@"

echo "=== SageMaker SDK 3 tests (local container mode through the real image, pipeline definition)"
IMAGE="$IMAGE" SKIP_BUILD=1 "$VENV_SDK3/bin/python" -m pytest -q -p no:cacheprovider "${SDK3_TESTS[@]}" "$@"
