"""`deploy --local` and `transform --local`: the image served the way SageMaker hosting
and batch transform run it, with docker on this machine.

SDK 3 has no local hosting that fits a bring-your-own image: ModelBuilder's
LOCAL_CONTAINER mode pulls the image from a registry before starting it (a tag built
on this machine fails), starts it through a model server it knows (TorchServe, MMS,
Triton, ...), and there is no local batch transform at all. So this does what
SageMaker does: model.tar.gz extracted into a folder mounted read-only at
/opt/ml/model, `docker run IMAGE serve` with port 8080 published on 127.0.0.1, /ping
until it answers 200, then requests to /invocations. The container and the extracted
model are removed when the command ends, also when it fails.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from container import ConfigError
from serve.archive import extract_model_archive
from smvision_aws.local_mode import LOCAL_LABEL, LocalJobError, docker

MB = 1024 * 1024


@dataclass(frozen=True)
class LocalEndpoint:
    url: str
    container: str

    def invoke(self, body: bytes, content_type: str, accept: str = "application/json") -> bytes:
        request = urllib.request.Request(
            f"{self.url}/invocations", data=body, method="POST", headers={"Content-Type": content_type, "Accept": accept}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            raise LocalJobError(f"/invocations answered {err.code}: {err.read().decode(errors='replace')[:500]}") from None

    def predict(self, body: bytes, content_type: str) -> dict:
        return json.loads(self.invoke(body, content_type))

    def execution_parameters(self) -> dict:
        """What the container asks batch transform for (MaxConcurrentTransforms, ...); {} if it has no opinion."""
        try:
            with urllib.request.urlopen(f"{self.url}/execution-parameters", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError:
            return {}


def extract_model(model_tar: Path, model_dir: Path) -> Path:
    """As SageMaker unpacks model.tar.gz into /opt/ml/model, through the image's own
    checked extraction (serve.archive): absolute paths, '..', links, special files and
    archive bombs are refused, and the files come out world-readable."""
    try:
        return extract_model_archive(model_tar, model_dir)
    except ConfigError as err:
        raise LocalJobError(f"model archive {model_tar}: {err}") from None


def _running(container: str, docker_cli: str) -> bool:
    return docker(["inspect", "-f", "{{.State.Running}}", container], docker_cli).strip() == "true"


def _logs(container: str, docker_cli: str) -> str:
    result = subprocess.run([docker_cli, "logs", "--tail", "50", container], capture_output=True, text=True)
    return (result.stdout + result.stderr)[-3000:]


def wait_ready(endpoint: LocalEndpoint, docker_cli: str = "docker", timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{endpoint.url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        if not _running(endpoint.container, docker_cli):
            raise LocalJobError(f"the serving container exited before /ping answered:\n{_logs(endpoint.container, docker_cli)}")
        time.sleep(0.5)
    raise LocalJobError(f"/ping did not answer 200 within {timeout_s:.0f}s:\n{_logs(endpoint.container, docker_cli)}")


@contextlib.contextmanager
def serving(image: str, model_tar: Path, env: dict[str, str], port: int | None = 8080, docker_cli: str = "docker"):
    """A LocalEndpoint for the block. port None: any free port (transform needs no fixed one)."""
    scratch = Path(tempfile.mkdtemp(prefix="smvision-model-"))
    container = f"smvision-local-{uuid.uuid4().hex[:10]}"
    try:
        model_dir = extract_model(model_tar, scratch / "model")
        scratch.chmod(0o755)  # readable by the container's user whatever user namespace docker maps it to
        environment = [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
        publish = f"127.0.0.1:{port}:8080" if port else "127.0.0.1::8080"
        docker(
            ["run", "-d", "--name", container, "--label", f"{LOCAL_LABEL}=serve", "-p", publish]
            + ["-v", f"{model_dir}:/opt/ml/model:ro", *environment, image, "serve"],
            docker_cli,
        )
        host_port = docker(["port", container, "8080/tcp"], docker_cli).splitlines()[0].rsplit(":", 1)[1]
        endpoint = LocalEndpoint(f"http://127.0.0.1:{host_port}", container)
        wait_ready(endpoint, docker_cli)
        yield endpoint
    finally:
        subprocess.run([docker_cli, "rm", "-f", container], capture_output=True)  # also when `run` itself failed
        shutil.rmtree(scratch, ignore_errors=True)


def batch_transform(
    image: str,
    model_tar: Path,
    input_dir: Path,
    output_dir: Path,
    content_type: str,
    env: dict[str, str] | None = None,
    max_concurrent: int | None = None,
    max_payload_mb: int = 6,
    docker_cli: str = "docker",
) -> list[Path]:
    """Batch transform as the AWS job runs it (SplitType None, SingleRecord, AssembleWith
    Line): each file under input_dir is one request; its answer, ending in a newline,
    goes to output_dir/<same relative path>.out. Returns the files written."""
    files = sorted(path for path in input_dir.rglob("*") if path.is_file())
    if not files:
        raise LocalJobError(f"no input files under {input_dir}")
    too_big = [str(path) for path in files if path.stat().st_size > max_payload_mb * MB]
    if too_big:
        raise LocalJobError(f"larger than MaxPayloadInMB={max_payload_mb}: {too_big}")
    # The environment SageMaker gives a batch transform container.
    batch_env = {**(env or {}), "SAGEMAKER_BATCH": "true", "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD"}
    batch_env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(max_payload_mb)
    if max_concurrent:
        batch_env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(max_concurrent)
    with serving(image, model_tar, batch_env, port=None, docker_cli=docker_cli) as endpoint:
        # As on AWS: the job's MaxConcurrentTransforms, else what the container asks for.
        workers = max_concurrent or int(endpoint.execution_parameters().get("MaxConcurrentTransforms", 1))

        def transform_one(path: Path) -> Path:
            answer = endpoint.invoke(path.read_bytes(), content_type)
            target = output_dir / path.relative_to(input_dir).parent / f"{path.name}.out"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(answer + b"\n")
            return target

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(transform_one, files))
