#!/usr/bin/env bash
# Build the image: make the default base if it is missing, then `docker build` with
# BuildKit. Usage: docker/build.sh [--cpu] [IMAGE[:TAG]] [extra docker build args...]
#
# --cpu builds the torch-free serving image instead (the Dockerfile's serve-cpu target,
# ~0.5 GB: our server and ONNX Runtime; docs/building.md says when to use which).
# PIP_CA_BUNDLE (default: the host's /etc/ssl/certs/ca-certificates.crt when present)
# is lent to pip as a BuildKit secret so builds work behind TLS-intercepting proxies;
# it is never written into a layer. Set PIP_CA_BUNDLE= (empty) to lend nothing.
# BASE_IMAGE picks another base (e.g. debian:bookworm-slim); TARGET=test builds the
# unit-test image.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [ "${1:-}" = "--cpu" ]; then
  TARGET=serve-cpu
  shift
fi
image="${1:-sagemaker-vision:latest}"
shift || true
base="${BASE_IMAGE:-local/debian:bookworm}"
. docker/docker-bin.sh

if [ "$base" = "local/debian:bookworm" ]; then
  DOCKER="$docker_bin" BASE_IMAGE="$base" docker/make_base.sh
fi

args=(--build-arg "BASE_IMAGE=$base" -f docker/Dockerfile -t "$image")
ca="${PIP_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
if [ -n "$ca" ] && [ -f "$ca" ]; then
  args+=(--secret "id=pipca,src=$ca")
fi
[ -n "${TARGET:-}" ] && args+=(--target "$TARGET")
revision="$(git rev-parse --short HEAD 2>/dev/null || true)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
args+=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision")

echo "building $image (base $base)"
DOCKER_BUILDKIT=1 "$docker_bin" build "${args[@]}" "$@" .
