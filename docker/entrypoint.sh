#!/bin/sh
# `train` and `serve` are executables on PATH (as in SageMaker's bring-your-own layout),
# so this only adds a usage text; any other command runs as given.
set -e
usage() {
  cat <<'USAGE'
sagemaker-vision: PyTorch image classification for SageMaker, EC2 and local docker.

  train [--flag value ...]   train a classifier (config: /opt/ml/input/config, flags override)
  train --help               every training flag with its default
  train prepare-bins ...     turn bin images + metadata JSONs into an ImageFolder split
  serve [--backend mms]      serve /opt/ml/model on port 8080 (/ping, /invocations)
  serve --help               serving options
  COMMAND ...                run anything else, e.g. bash or python -c '...'
USAGE
}
case "${1:-}" in
  ""|-h|--help|help) usage ;;
  *) exec "$@" ;;
esac
