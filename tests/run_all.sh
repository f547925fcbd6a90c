#!/usr/bin/env bash
# Every test, on a fresh Debian machine or a developer's:
#   0. ruff lint and format check,
#   1. unit tests inside the image's `test` stage (exactly the image's torch),
#   2. host-side tests (AWS code with Stubber/moto, shell scripts with fake tools),
#   3. container tests driving the real image through the docker SDK and HTTP.
# The host needs no torch: a venv with requirements-test.txt is enough.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-sagemaker-vision:test}"
UNIT_IMAGE="${IMAGE%%:*}:unit"
VENV="${VENV:-.venv}"

local_test/bootstrap_host.sh
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r requirements-test.txt

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
IMAGE="$IMAGE" SKIP_BUILD=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${host_dirs[@]}" "$@"
