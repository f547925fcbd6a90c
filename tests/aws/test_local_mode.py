"""What `--local` leaves on docker and the per-host check of local training, through a
fake `docker` executable; and the model extraction local hosting does."""

from __future__ import annotations

import io
import stat
import tarfile

import pytest
from smvision_aws import cli, local_hosting, local_mode
from smvision_aws.commands.endpoints import cmd_cleanup, cmd_deploy, cmd_transform
from smvision_aws.usage import UsageError


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """docker ps/inspect/rm answered from a table; every call is logged. Containers:
    c1 a local serving container, c2 a host of a local training project, c3 somebody
    else's compose project, c4 a local container of another image, c5 unlabelled."""
    log = tmp_path / "calls.log"
    script = tmp_path / "docker"
    script.write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$1" in
  ps) printf 'c1\\tsmvision-local-abc\\tserve\\t\\nc2\\tsmvtrain0123456789-algo-1-1\\t\\tsmvtrain0123456789\\nc3\\tshop-db-1\\t\\tshop\\nc4\\tsmvision-local-def\\tserve\\t\\nc5\\tmy-own\\t\\t\\n' ;;
  inspect) printf 'c1 img\\nc2 img\\nc4 someone-elses:tag\\n' ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def test_only_this_images_local_containers_are_found(fake_docker):
    docker, log = fake_docker
    assert local_mode.leftover_containers("img", docker_cli=docker) == [("c1", "smvision-local-abc"), ("c2", "smvtrain0123456789-algo-1-1")]
    # only the labelled/project containers were inspected, never c3 or c5
    inspect = next(line for line in log.read_text().splitlines() if line.startswith("inspect"))
    assert inspect.split()[-3:] == ["c1", "c2", "c4"]
    local_mode.remove_containers(["smvision-local-abc"], docker_cli=docker)
    assert log.read_text().splitlines()[-1] == "rm -f smvision-local-abc"


def test_cleanup_local_needs_the_image():
    with pytest.raises(UsageError, match="--image"):
        cmd_cleanup(cli.get_args_parser().parse_args(["cleanup", "--local"]))


def test_every_host_is_checked_not_only_the_first():
    results = {"algo-1": ("a", 0), "algo-2": ("b", 137), "algo-3": (None, None)}
    with pytest.raises(local_mode.LocalJobError, match="algo-2 exited with 137.*algo-3 exited with no container"):
        local_mode.check_hosts(results)
    local_mode.check_hosts({"algo-1": ("a", 0), "algo-2": ("b", 0)})


def _archive(tmp_path, members: dict[str, bytes]):
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_model_tar_is_extracted_like_sagemaker_and_escapes_are_refused(tmp_path):
    good = _archive(tmp_path, {"model.pt": b"w", "code/inference.py": b"x"})
    out = local_hosting.extract_model(good, tmp_path / "model")
    assert (out / "model.pt").read_bytes() == b"w" and (out / "code" / "inference.py").is_file()
    evil = _archive(tmp_path, {"../outside.txt": b"x"})
    with pytest.raises(local_mode.LocalJobError, match=r"refusing member '\.\./outside\.txt'"):
        local_hosting.extract_model(evil, tmp_path / "model")
    assert not (tmp_path / "outside.txt").exists()


def test_local_transform_and_deploy_refuse_aws_only_flags(tmp_path):
    parser = cli.get_args_parser()
    base = ["transform", "--local", "--image", "img", "--model-data", "file:///m.tar.gz"]
    with pytest.raises(UsageError, match="file:///"):
        cmd_transform(parser.parse_args([*base, "--input", "s3://b/in/", "--output", "file:///o"]))
    with pytest.raises(UsageError, match="--ami-version"):
        cmd_transform(
            parser.parse_args([*base, "--input", "file:///i", "--output", "file:///o", "--ami-version", "al2-ami-sagemaker-batch-gpu-535"])
        )
    with pytest.raises(UsageError, match="need AWS"):
        cmd_deploy(parser.parse_args(["deploy", "--local", "--image", "img", "--endpoint-name", "e", "--serverless"]))
