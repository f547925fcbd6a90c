#!/usr/bin/env bash
# Serve local_test/test_dir/model as a SageMaker endpoint would: test_dir is mounted as
# /opt/ml and the server listens on localhost:8080 (/ping, /invocations).
# Usage: local_test/serve_local.sh [serve flags...]   e.g. --backend mms, --top-k 3
# Env: IMAGE (default sagemaker-vision:latest), PORT (host port, default 8080), and any
# SAGEMAKER_* / SM_VISION_* variable is passed through (SAGEMAKER_MULTI_MODEL=true ...).
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")"
IMAGE="${IMAGE:-sagemaker-vision:latest}"
PORT="${PORT:-8080}"
. ../docker/docker-bin.sh
if [ ! -e test_dir/model/model_spec.json ] && [ ! -e test_dir/model/model.tar.gz ] && [ "${SAGEMAKER_MULTI_MODEL:-}" != "true" ]; then
  echo "no model in local_test/test_dir/model: run local_test/train_local.sh first" >&2
  exit 1
fi
env_args=()
while IFS='=' read -r name _; do
  env_args+=(-e "$name")
done < <(env | grep -E '^(SAGEMAKER_|SM_VISION_)' || true)
gpus=()
if [ -e /dev/nvidiactl ]; then gpus=(--gpus all); fi
tty=()
if [ -t 0 ]; then tty=(-it); fi
echo "serving test_dir/model on http://localhost:$PORT (Ctrl-C stops it)"
exec "$docker_bin" run --rm "${tty[@]}" "${gpus[@]}" "${env_args[@]}" -p "$PORT:8080" -v "$PWD/test_dir:/opt/ml" "$IMAGE" serve "$@"
