"""build_and_push.sh with fake `aws` and `docker` on PATH that record their arguments:
the exact command sequence, the repository created only when describe fails, the
registry URL, the tags, --dry-run, and the missing-tool errors. No docker daemon or AWS
account is used; PATH holds only the fakes and the few utilities the scripts call."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "build_and_push.sh"
ACCOUNT = "123456789012"
UTILITIES = ("bash", "sed", "dirname", "git", "head", "env", "cat", "id")

FAKE_AWS = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"tool": "aws", "argv": args}}) + "\\n")
if args[:3] == ["configure", "get", "region"]:
    region = os.environ.get("FAKE_CONFIG_REGION", "")
    print(region) if region else None
    sys.exit(0 if region else 1)
if args[:2] == ["sts", "get-caller-identity"]:
    print(os.environ.get("FAKE_ACCOUNT", "{account}"))
elif args[:2] == ["ecr", "describe-repositories"]:
    if os.environ.get("FAKE_REPO_EXISTS") != "1":
        print("An error occurred (RepositoryNotFoundException)", file=sys.stderr)
        sys.exit(254)
    print("{{}}")
elif args[:2] == ["ecr", "create-repository"]:
    print("created-uri")
elif args[:2] == ["ecr", "get-login-password"]:
    print("fake-password")
"""

FAKE_DOCKER = """#!{python}
import json, os, sys
args = sys.argv[1:]
entry = {{"tool": "docker", "argv": args}}
if args[:1] == ["login"]:
    entry["stdin"] = sys.stdin.read()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
"""


@pytest.fixture
def sandbox(tmp_path):
    """A bin dir with the fakes and the utilities; returns (env, bin_dir, log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in UTILITIES:
        real = shutil.which(name)
        assert real, f"{name} is needed on the host to run this test"
        (bin_dir / name).symlink_to(real)
    for name, text in (("aws", FAKE_AWS), ("docker", FAKE_DOCKER)):
        fake = bin_dir / name
        fake.write_text(text.format(python=sys.executable, account=ACCOUNT))
        fake.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {"PATH": str(bin_dir), "FAKE_LOG": str(log), "HOME": str(tmp_path), "PIP_CA_BUNDLE": "", "LANG": "C.UTF-8"}
    return env, bin_dir, log


def run(env: dict, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(SCRIPT), *args], env={**env, **extra}, capture_output=True, text=True, timeout=60)


def calls(log: Path) -> list[tuple]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        out.append((entry["tool"], *entry["argv"]) + ((("stdin", entry["stdin"]),) if "stdin" in entry else ()))
    return out


def git_sha() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def build_call(image_tag: str) -> tuple:
    """What docker/build.sh runs for IMAGE:TAG (no CA bundle lent, default base)."""
    version = re.search(r'^version = "(.*)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    return (
        "docker",
        "build",
        "--build-arg",
        "BASE_IMAGE=local/debian:bookworm",
        "-f",
        "docker/Dockerfile",
        "-t",
        image_tag,
        "--build-arg",
        f"VERSION={version}",
        "--build-arg",
        f"REVISION={git_sha()}",
        ".",
    )


def test_creates_missing_repository_logs_in_builds_tags_and_pushes(sandbox):
    env, _, log = sandbox
    result = run(env, "smv", "v7", AWS_REGION="eu-west-1")
    assert result.returncode == 0, result.stderr
    registry = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
    assert calls(log) == [
        ("aws", "sts", "get-caller-identity", "--query", "Account", "--output", "text"),
        ("aws", "ecr", "describe-repositories", "--repository-names", "smv", "--region", "eu-west-1"),
        (
            "aws",
            "ecr",
            "create-repository",
            "--repository-name",
            "smv",
            "--region",
            "eu-west-1",
            "--query",
            "repository.repositoryUri",
            "--output",
            "text",
        ),
        ("aws", "ecr", "get-login-password", "--region", "eu-west-1"),
        ("docker", "login", "--username", "AWS", "--password-stdin", registry, ("stdin", "fake-password\n")),
        ("docker", "image", "inspect", "local/debian:bookworm"),  # build.sh: is the base there?
        build_call("smv:v7"),
        ("docker", "tag", "smv:v7", f"{registry}/smv:v7"),
        ("docker", "tag", "smv:v7", f"{registry}/smv:latest"),
        ("docker", "push", f"{registry}/smv:v7"),
        ("docker", "push", f"{registry}/smv:latest"),
    ]
    assert f"pushed {registry}/smv:v7 and {registry}/smv:latest" in result.stdout


def test_cpu_builds_the_torch_free_image_and_pushes_it_as_tag_cpu(sandbox):
    env, _, log = sandbox
    result = run(env, "--cpu", "smv", "v7", AWS_REGION="eu-west-1")
    assert result.returncode == 0, result.stderr
    registry = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
    recorded = calls(log)
    [build] = [c for c in recorded if c[:2] == ("docker", "build")]
    assert build[build.index("-t") + 1] == "smv:v7-cpu" and build[build.index("--target") + 1] == "serve-cpu", build
    assert recorded[-4:] == [
        ("docker", "tag", "smv:v7-cpu", f"{registry}/smv:v7-cpu"),
        ("docker", "tag", "smv:v7-cpu", f"{registry}/smv:latest-cpu"),
        ("docker", "push", f"{registry}/smv:v7-cpu"),
        ("docker", "push", f"{registry}/smv:latest-cpu"),
    ]
    assert f"pushed {registry}/smv:v7-cpu and {registry}/smv:latest-cpu" in result.stdout


def test_existing_repository_is_not_created_again(sandbox):
    env, _, log = sandbox
    result = run(env, "smv", "v7", AWS_REGION="eu-west-1", FAKE_REPO_EXISTS="1")
    assert result.returncode == 0, result.stderr
    recorded = calls(log)
    assert not [c for c in recorded if c[:3] == ("aws", "ecr", "create-repository")]
    assert ("aws", "ecr", "describe-repositories", "--repository-names", "smv", "--region", "eu-west-1") in recorded
    assert recorded[-1] == ("docker", "push", f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/smv:latest")


def test_default_tag_is_the_git_sha_and_region_from_aws_configure(sandbox):
    env, _, log = sandbox
    result = run(env, "smv", FAKE_CONFIG_REGION="ap-southeast-2", FAKE_REPO_EXISTS="1")
    assert result.returncode == 0, result.stderr
    recorded = calls(log)
    assert recorded[0] == ("aws", "configure", "get", "region")
    sha = git_sha()
    registry = f"{ACCOUNT}.dkr.ecr.ap-southeast-2.amazonaws.com"
    assert build_call(f"smv:{sha}") in recorded
    assert ("docker", "push", f"{registry}/smv:{sha}") in recorded
    assert ("docker", "push", f"{registry}/smv:latest") in recorded


def test_region_precedence_aws_region_then_aws_default_region(sandbox):
    env, _, log = sandbox
    result = run(
        env, "smv", "t", AWS_REGION="us-west-2", AWS_DEFAULT_REGION="us-east-1", FAKE_CONFIG_REGION="eu-central-1", FAKE_REPO_EXISTS="1"
    )
    assert result.returncode == 0, result.stderr
    assert ("docker", "push", f"{ACCOUNT}.dkr.ecr.us-west-2.amazonaws.com/smv:t") in calls(log)
    log.unlink()
    result = run(env, "smv", "t", AWS_DEFAULT_REGION="us-east-1", FAKE_CONFIG_REGION="eu-central-1", FAKE_REPO_EXISTS="1")
    assert result.returncode == 0, result.stderr
    recorded = calls(log)
    assert ("aws", "configure", "get", "region") not in recorded
    assert ("docker", "push", f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/smv:t") in recorded


def test_china_regions_use_the_amazonaws_com_cn_registry(sandbox):
    env, _, log = sandbox
    result = run(env, "smv", "t", AWS_REGION="cn-north-1", FAKE_REPO_EXISTS="1")
    assert result.returncode == 0, result.stderr
    assert ("docker", "push", f"{ACCOUNT}.dkr.ecr.cn-north-1.amazonaws.com.cn/smv:t") in calls(log)


def test_dry_run_prints_the_changes_and_runs_only_lookups(sandbox):
    env, _, log = sandbox
    result = run(env, "--dry-run", "smv", "v7", AWS_REGION="eu-west-1")
    assert result.returncode == 0, result.stderr
    assert calls(log) == [
        ("aws", "sts", "get-caller-identity", "--query", "Account", "--output", "text"),
        ("aws", "ecr", "describe-repositories", "--repository-names", "smv", "--region", "eu-west-1"),
    ]
    registry = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
    printed = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    docker = str(env["PATH"]) + "/docker"
    assert printed == [
        "+ aws ecr create-repository --repository-name smv --region eu-west-1 --query repository.repositoryUri --output text",
        f"+ aws ecr get-login-password --region eu-west-1 | docker login --username AWS --password-stdin {registry}",
        f"+ env DOCKER={docker} docker/build.sh smv:v7",
        f"+ {docker} tag smv:v7 {registry}/smv:v7",
        f"+ {docker} tag smv:v7 {registry}/smv:latest",
        f"+ {docker} push {registry}/smv:v7",
        f"+ {docker} push {registry}/smv:latest",
    ]


@pytest.mark.parametrize("missing, message", [("aws", "the aws CLI is not installed"), ("docker", "docker is not installed")])
def test_missing_tool_is_a_clear_error(sandbox, missing, message):
    env, bin_dir, log = sandbox
    (bin_dir / missing).unlink()
    result = run(env, "smv", "v7", AWS_REGION="eu-west-1")
    assert result.returncode != 0
    assert message in result.stderr
    assert calls(log) == []  # checked before anything runs


def test_no_region_is_a_clear_error(sandbox):
    env, _, log = sandbox
    result = run(env, "smv", "v7")
    assert result.returncode != 0
    assert "no AWS region" in result.stderr
    assert calls(log) == [("aws", "configure", "get", "region")]


def test_usage(sandbox):
    env, _, _ = sandbox
    result = run(env)
    assert result.returncode == 2 and "Usage: ./build_and_push.sh [--dry-run] [--cpu] IMAGE_NAME [TAG]" in result.stderr
    result = run(env, "--help")
    assert result.returncode == 0 and "IMAGE_NAME" in result.stdout and "set -euo" not in result.stdout
    result = run(env, "--bogus", "smv")
    assert result.returncode != 0 and "unknown option --bogus" in result.stderr
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().splitlines()[:20].count("set -euo pipefail") == 1
