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
#
# Who runs what (docs/security.md): the container starts as root, as SageMaker expects
# ("SageMaker AI expects all containers to run with root users"). `train` and
# processing commands stay root: SageMaker mounts /opt/ml/model, /opt/ml/output,
# /opt/ml/checkpoints and /opt/ml/processing/* root-owned, and the job must write them.
# `serve` only reads the model and writes /tmp, so it drops to $SM_VISION_SERVE_USER
# (default model-server) with setpriv: no capabilities, no supplementary root group,
# no-new-privs. The user hooks, `pip install -r code/requirements.txt` (into the
# user's site) and MMS workers run as that user too. The exception: when the model
# directory holds files that user cannot read (an archive made with mode 600 files)
# and SM_VISION_SERVE_USER was not set, `serve` stays root and says why, since root is
# all SageMaker guarantees can read what it downloads. SM_VISION_SERVE_USER=root keeps
# root; naming the user explicitly drops even then (and the load fails visibly).
# Started as another user already (`docker run --user`), nothing changes.
set -e
usage() {
  cat <<'USAGE'
sagemaker-vision: PyTorch image classification for SageMaker, EC2 and local docker.

  train [--flag value ...]   train a classifier (config: /opt/ml/input/config, flags override)
  train --help               every training flag with its default
  train check-data ...       check a dataset: unreadable, tiny, duplicate, leaked images; class counts; fingerprint
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

# serve as the unprivileged user (see the top of this file); returns when serve stays root.
serve_unprivileged() {
  user="${SM_VISION_SERVE_USER:-model-server}"
  [ "$(id -u)" = 0 ] && [ "$user" != root ] || return 0
  home="$(getent passwd "$user" | cut -d: -f6)"
  if [ -z "$home" ]; then
    echo "error: SM_VISION_SERVE_USER=$user is not a user of this image" >&2
    exit 2
  fi
  as_user="setpriv --reuid=$user --regid=$user --init-groups --no-new-privs"
  model="${SM_VISION_MODEL_DIR:-$root/model}"
  if [ -z "${SM_VISION_SERVE_USER:-}" ] && [ -d "$model" ] \
     && [ -n "$($as_user find "$model" ! -readable -print -quit 2>&1)" ]; then
    echo "warning: $model holds files $user cannot read; serving as root (make them world-readable, or set SM_VISION_SERVE_USER=root to say so)" >&2
    return 0
  fi
  # The user's site (where pip puts code/requirements.txt as this user) goes first on
  # sys.path, as PYTHONPATH: Python itself puts a venv before the user site, and a
  # model that pins another version of a package the image has must get its version,
  # as it does when AWS's images pip-install into their environment as root.
  export HOME="$home" USER="$user" LOGNAME="$user"
  user_site="$(python -c 'import site; print(site.getusersitepackages())')"
  export PYTHONPATH="$user_site${PYTHONPATH:+:$PYTHONPATH}"
  # MMS (serve --backend mms) writes its logs under LOG_LOCATION, else ./logs in /opt/ml.
  export LOG_LOCATION="${LOG_LOCATION:-/tmp/mms/logs}" METRICS_LOCATION="${METRICS_LOCATION:-/tmp/mms/logs}"
  exec $as_user "$@"
}

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
  serve) serve_unprivileged "$@"; exec "$@" ;;
  *) exec "$@" ;;
esac
