#!/usr/bin/env bash
# Build the image and push it to Amazon ECR, tagged with TAG and latest.
#
# Usage: ./build_and_push.sh [--dry-run] [--cpu] IMAGE_NAME [TAG]
#
#   IMAGE_NAME  ECR repository name (created if missing), e.g. sagemaker-vision
#   TAG         image tag (default: the git short SHA); `latest` is pushed as well
#   --dry-run   print the commands that change something (create-repository, login,
#               build, tag, push) instead of running them; the read-only look-ups
#               (region, account, describe-repositories) still run
#   --cpu       the torch-free serving image (docker/build.sh --cpu) instead, pushed
#               as TAG-cpu and latest-cpu beside the full image (deploy --image-variant cpu)
#
# Region: AWS_REGION, else AWS_DEFAULT_REGION, else `aws configure get region`.
# Account: `aws sts get-caller-identity`. Needs the aws CLI and docker on PATH.
# The image is built by docker/build.sh (extra env such as BASE_IMAGE applies).
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 1; }

dry_run=0
variant=()
suffix=""
positional=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --cpu) variant=(--cpu); suffix="-cpu" ;;
    -*) usage >&2; die "unknown option $arg" ;;
    *) positional+=("$arg") ;;
  esac
done
if [ "${#positional[@]}" -lt 1 ] || [ "${#positional[@]}" -gt 2 ]; then
  usage >&2
  exit 2
fi
image="${positional[0]}"
tag="${positional[1]:-}"

command -v aws >/dev/null 2>&1 || die "the aws CLI is not installed or not on PATH (https://aws.amazon.com/cli/)"
docker_bin="$(command -v docker || true)"
[ -n "$docker_bin" ] || die "docker is not installed or not on PATH"

if [ -z "$tag" ]; then
  tag="$(git rev-parse --short HEAD 2>/dev/null)" || die "not a git checkout: pass TAG explicitly"
fi

# Print (dry run) or run a command that changes something.
run() {
  if [ "$dry_run" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
if [ -z "$region" ]; then
  region="$(aws configure get region 2>/dev/null || true)"
fi
[ -n "$region" ] || die "no AWS region: set AWS_REGION or run 'aws configure set region REGION'"

account="$(aws sts get-caller-identity --query Account --output text)" \
  || die "cannot read the AWS account (aws sts get-caller-identity failed): check your credentials"
[ -n "$account" ] && [ "$account" != "None" ] || die "aws sts get-caller-identity returned no account"

domain="amazonaws.com"
case "$region" in cn-*) domain="amazonaws.com.cn" ;; esac
registry="${account}.dkr.ecr.${region}.${domain}"
remote="${registry}/${image}"

if aws ecr describe-repositories --repository-names "$image" --region "$region" >/dev/null 2>&1; then
  echo "ECR repository $image exists in $region"
else
  echo "creating ECR repository $image in $region"
  run aws ecr create-repository --repository-name "$image" --region "$region" --query repository.repositoryUri --output text
fi

if [ "$dry_run" = 1 ]; then
  echo "+ aws ecr get-login-password --region $region | docker login --username AWS --password-stdin $registry"
else
  aws ecr get-login-password --region "$region" | "$docker_bin" login --username AWS --password-stdin "$registry"
fi

tag="${tag}${suffix}"
latest="latest${suffix}"
run env DOCKER="$docker_bin" docker/build.sh "${variant[@]}" "${image}:${tag}"
run "$docker_bin" tag "${image}:${tag}" "${remote}:${tag}"
run "$docker_bin" tag "${image}:${tag}" "${remote}:${latest}"
run "$docker_bin" push "${remote}:${tag}"
run "$docker_bin" push "${remote}:${latest}"
if [ "$dry_run" = 1 ]; then
  echo "dry run: would push ${remote}:${tag} and ${remote}:${latest}"
else
  echo "pushed ${remote}:${tag} and ${remote}:${latest}"
fi
