#!/usr/bin/env bash
# Generate a tiny learnable dataset (coloured shapes, 3 classes) into
# local_test/test_dir/input/data/training/{train,valid,test}, using the image itself
# (no Python packages needed on the host).
set -euo pipefail
cd "$(dirname "$0")"
IMAGE="${IMAGE:-sagemaker-vision:latest}"
. ../docker/docker-bin.sh
rm -rf test_dir/input/data/training
mkdir -p test_dir/input/data
"$docker_bin" run --rm -v "$PWD/test_dir:/opt/ml" "$IMAGE" \
  python -m train.synthetic shapes /opt/ml/input/data/training --per-class "${PER_CLASS:-40}" --size 64
