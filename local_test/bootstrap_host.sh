#!/usr/bin/env bash
# Make a fresh Debian host ready: docker (Debian's docker.io, which has BuildKit
# built in), debootstrap for the base image, python3-venv for the test tools; start
# dockerd when it is not running (systemd where there is one, else in the background).
set -euo pipefail

sudo_cmd=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 1; }
  sudo_cmd="sudo"
fi

need=()
[ -x /usr/bin/docker ] || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v curl >/dev/null || need+=(curl)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! /usr/bin/docker info >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    $sudo_cmd systemctl start docker
  else
    echo "starting dockerd in the background (log: /tmp/dockerd.log)"
    $sudo_cmd sh -c 'nohup dockerd >/tmp/dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 60); do
    /usr/bin/docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
/usr/bin/docker info >/dev/null 2>&1 || { echo "error: docker daemon did not start (see /tmp/dockerd.log)" >&2; exit 1; }
if [ "$(id -u)" != 0 ] && ! /usr/bin/docker ps >/dev/null 2>&1; then
  echo "error: $(whoami) cannot talk to docker: sudo usermod -aG docker $(whoami), then log in again" >&2
  exit 1
fi
echo "docker $(/usr/bin/docker version --format '{{.Server.Version}}') is running"
