#!/usr/bin/env bash
# Make the default base image (local/debian:bookworm) from Debian's package mirror,
# because this project must build where no registry can be pulled from.
# Does nothing when the image already exists. Users with registry access can skip
# this entirely and build with --build-arg BASE_IMAGE=debian:bookworm-slim.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-local/debian:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-docker}"

if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "base image $BASE_IMAGE exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
# debootstrap and reading its root-owned tree need root.
as_root=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "error: debootstrap needs root (or sudo)" >&2; exit 1; }
  as_root="sudo"
fi

rootfs="$(mktemp -d /tmp/bookworm-rootfs.XXXXXX)"
trap '$as_root rm -rf "$rootfs"' EXIT
echo "making $BASE_IMAGE with debootstrap from $MIRROR"
$as_root debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
# Security updates as a normal debian:bookworm image has them.
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
  "$MIRROR" "$MIRROR" | $as_root tee "$rootfs/etc/apt/sources.list" >/dev/null
$as_root sh -c "rm -rf '$rootfs'/var/cache/apt/archives/*.deb '$rootfs'/var/lib/apt/lists/*"
$as_root tar -C "$rootfs" -c . | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
echo "made $BASE_IMAGE"
