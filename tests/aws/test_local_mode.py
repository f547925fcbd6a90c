"""Per-host results of SDK local mode, read through a fake `docker` executable."""

from __future__ import annotations

import stat

import pytest
from smvision_aws import local_mode


@pytest.fixture
def fake_docker(tmp_path):
    """docker ps/inspect/rm answered from a table; every call is logged."""
    log = tmp_path / "calls.log"
    script = tmp_path / "docker"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$1" in
  ps)
    case "$*" in
      *name=-algo-*) printf 'c1 abcdefghij-algo-1-xyz12\\nc2 klmnopqrst-algo-2-xyz12\\nc3 my-own-container\\nc4 uvwxyzabcd-algo-1-other\\nc5 zzzzzzzzzz-algo-1-abcde\\n' ;;
      *name=algo-1-xyz12*) echo abcdefghij-algo-1-xyz12 ;;
      *name=algo-2-xyz12*) echo klmnopqrst-algo-2-xyz12 ;;
    esac ;;
  inspect)
    case "$*" in
      *Config.Image*) printf '/abcdefghij-algo-1-xyz12 img\\n/klmnopqrst-algo-2-xyz12 img\\n/zzzzzzzzzz-algo-1-abcde someone-elses:tag\\n' ;;
      *algo-1*) echo 0 ;;
      *algo-2*) echo 137 ;;
    esac ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def test_every_host_is_checked_not_only_the_first(fake_docker):
    docker, _ = fake_docker
    results = local_mode.host_exit_codes(["algo-1-xyz12", "algo-2-xyz12", "algo-3-xyz12"], docker=docker)
    assert results == {
        "algo-1-xyz12": ("abcdefghij-algo-1-xyz12", 0),
        "algo-2-xyz12": ("klmnopqrst-algo-2-xyz12", 137),
        "algo-3-xyz12": (None, None),
    }
    with pytest.raises(local_mode.LocalJobError, match="algo-2-xyz12 exited with 137.*algo-3-xyz12 exited with no container"):
        local_mode.check_hosts(results)
    local_mode.check_hosts({"algo-1-xyz12": ("a", 0), "algo-2-xyz12": ("b", 0)})


def test_only_new_local_mode_containers_are_removed(fake_docker):
    docker, log = fake_docker
    assert local_mode.leftover_containers("img", docker=docker) == [("c1", "abcdefghij-algo-1-xyz12"), ("c2", "klmnopqrst-algo-2-xyz12")]
    with local_mode.removing_new_containers("img", docker=docker):
        pass  # nothing new appeared: nothing may be removed
    assert not any(line.startswith("rm") for line in log.read_text().splitlines())
    local_mode.remove_containers(["abcdefghij-algo-1-xyz12"], docker=docker)
    assert log.read_text().splitlines()[-1] == "rm -f abcdefghij-algo-1-xyz12"
