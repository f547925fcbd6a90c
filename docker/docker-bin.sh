# Sourced by the project's shell scripts: sets docker_bin, the docker client to use.
# $DOCKER wins; else Debian's /usr/bin/docker, which has BuildKit built in (a newer client
# earlier on PATH may lack buildx); else whatever `docker` is on PATH.
docker_bin="${DOCKER:-}"
if [ -z "$docker_bin" ]; then
  if [ -x /usr/bin/docker ]; then
    docker_bin=/usr/bin/docker
  else
    docker_bin="$(command -v docker || true)"
  fi
fi
if [ -z "$docker_bin" ]; then
  echo "error: docker is not installed (bash local_test/bootstrap_host.sh installs it)" >&2
  exit 1
fi
