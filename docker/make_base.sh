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
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }

rootfs="$(mktemp -d /tmp/bookworm-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "making $BASE_IMAGE with debootstrap from $MIRROR"
debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
# Security updates as a normal debian:bookworm image has them.
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
echo "made $BASE_IMAGE"
