#!/usr/bin/env bash
# The main job end to end on a fresh Debian machine: set up docker, build the image,
# generate a tiny dataset, train on it, serve the model and curl one prediction.
set -euo pipefail
cd "$(dirname "$0")/.."
export IMAGE="${IMAGE:-sagemaker-vision:latest}"
. docker/docker-bin.sh

local_test/bootstrap_host.sh
docker/build.sh "$IMAGE"
local_test/make_data.sh
local_test/train_local.sh
echo "--- model: $(ls local_test/test_dir/model | tr '\n' ' ')"
echo "--- metrics: local_test/test_dir/output/data/metrics.json and *.png"

name="sagemaker-vision-demo-$$"
trap '"$docker_bin" rm -f "$name" >/dev/null 2>&1 || true' EXIT
"$docker_bin" run -d --name "$name" -p 127.0.0.1::8080 -v "$PWD/local_test/test_dir/model:/opt/ml/model:ro" "$IMAGE" serve >/dev/null
port="$("$docker_bin" port "$name" 8080/tcp | head -1 | sed 's/.*://')"
for _ in $(seq 1 120); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ping")" = 200 ] && break
  sleep 1
done
sample="$(ls local_test/test_dir/input/data/training/test/red_circle/*.png | head -1)"
echo "--- POST $sample (a red circle) to /invocations:"
curl -sS --fail-with-body -X POST "http://127.0.0.1:$port/invocations" -H "Content-Type: image/png" --data-binary "@$sample"
echo
