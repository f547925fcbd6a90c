#!/usr/bin/env bash
# Run the training-throughput benchmark inside the image (GPU when one is present).
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE="${IMAGE:-sagemaker-vision:latest}"
. docker/docker-bin.sh
gpus=()
if [ -e /dev/nvidiactl ]; then gpus=(--gpus all); fi
"$docker_bin" run --rm "${gpus[@]}" -v "$PWD/benchmarks:/bench:ro" -e PYTHONPATH=/bench "$IMAGE" \
  python /bench/train_throughput/bench.py "$@"
