#!/usr/bin/env bash
# Train as SageMaker would: local_test/test_dir is mounted as /opt/ml, so
# test_dir/input/config/hyperparameters.json and test_dir/input/data/training are the
# job's config and data; the model lands in test_dir/model. Extra flags override
# hyperparameters.json, e.g.  local_test/train_local.sh --epochs 2
set -euo pipefail
cd "$(dirname "$0")"
IMAGE="${IMAGE:-sagemaker-vision:latest}"
. ../docker/docker-bin.sh
if [ ! -d test_dir/input/data/training ]; then
  echo "no data in local_test/test_dir/input/data/training: run local_test/make_data.sh first" >&2
  exit 1
fi
rm -rf test_dir/model/* test_dir/output/* test_dir/checkpoints/*
mkdir -p test_dir/model test_dir/output test_dir/checkpoints
gpus=()
if [ -e /dev/nvidiactl ]; then gpus=(--gpus all); fi
"$docker_bin" run --rm "${gpus[@]}" --shm-size 2g -v "$PWD/test_dir:/opt/ml" "$IMAGE" train "$@"
