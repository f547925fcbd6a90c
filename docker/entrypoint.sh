#!/bin/sh
# `train`, `serve` and `monitor` are executables on PATH (as in SageMaker's bring-your-own
# layout), so a command runs as given. Without a command the container decides from what its
# host left in /opt/ml (the rule is written out in docs/aws.md, "Started without a
# command"):
#   - a training job's config (input/config/hyperparameters.json or resourceconfig.json,
#     which SageMaker and every SDK's local mode write before the container starts):
#     run `train`. SDK 3's ModelTrainer starts the image with no command, where 2.x
#     passed `train`.
#   - Model Monitor's environment (sagemaker_monitoring_schedule_name or dataset_format,
#     which a monitoring schedule's job always gets): run `monitor`.
#   - a processing job's config (config/processingjobconfig.json) and no command:
#     fail with a message, a processing job must say which command to run.
#   - anything else (a plain `docker run IMAGE`): print the usage text.
set -e
usage() {
  cat <<'USAGE'
sagemaker-vision: PyTorch image classification for SageMaker, EC2 and local docker.

  train [--flag value ...]   train a classifier (config: /opt/ml/input/config, flags override)
  train --help               every training flag with its default
  train prepare-bins ...     turn bin images + metadata JSONs into an ImageFolder split
  serve [--backend mms]      serve /opt/ml/model on port 8080 (/ping, /invocations)
  serve --help               serving options
  monitor [--captures DIR --model DIR --out DIR]
                             check captured traffic for drift (Model Monitor's contract, or flags)
  monitor baseline --model DIR --data IMAGES
                             write a monitoring baseline into a model
  COMMAND ...                run anything else, e.g. bash or python -c '...'

Without a command, a container that finds a training job's config in
/opt/ml/input/config (hyperparameters.json or resourceconfig.json) runs `train`;
one started by a Model Monitor schedule runs `monitor`.
USAGE
}
root="${SM_VISION_OPT_ML:-/opt/ml}"
case "${1:-}" in
  -h|--help|help) usage ;;
  "")
    if [ -f "$root/input/config/hyperparameters.json" ] || [ -f "$root/input/config/resourceconfig.json" ]; then
      exec train
    elif [ -n "${sagemaker_monitoring_schedule_name:-}" ] || [ -n "${dataset_format:-}" ]; then
      exec monitor
    elif [ -f "$root/config/processingjobconfig.json" ]; then
      echo "error: a processing job needs a command, e.g. ContainerArguments [\"monitor\", ...] or [\"train\", \"prepare-bins\", ...]" >&2
      exit 2
    fi
    usage
    ;;
  *) exec "$@" ;;
esac
