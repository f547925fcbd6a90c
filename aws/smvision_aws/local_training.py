"""`train --local` / `tune --local` through SDK 3's local container mode (ModelTrainer
with Mode.LOCAL_CONTAINER).

SDK 3 runs each host as a compose service (`algo-N`) of a project named after the local
root folder, starts the image with no command (the image then runs `train`), mounts one
shared /opt/ml/model, and packs <root>/compressed_artifacts/model.tar.gz. It reports
only the first container to exit, so every host's own exit code is read from the
containers of that compose project, which are removed afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlparse

from smvision_aws.local_mode import TRAINING_PROJECT_PREFIX, LocalJobError, check_hosts
from smvision_aws.sessions import prepare_local_environment
from smvision_aws.training import TrainSpec
from smvision_aws.usage import UsageError


def _project_containers(project: str, docker: str = "docker") -> dict[str, tuple[str, int]]:
    """{service (algo-N): (container id, exit code)} of one compose project."""
    ids = subprocess.run(
        [docker, "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"], check=True, capture_output=True, text=True
    ).stdout.split()
    if not ids:
        return {}
    rows = subprocess.run(
        [docker, "inspect", "-f", '{{index .Config.Labels "com.docker.compose.service"}} {{.Id}} {{.State.ExitCode}}', *ids],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return {service: (cid, int(code)) for service, cid, code in (row.split() for row in rows if row.strip())}


def train(spec: TrainSpec, gpu: bool, job_name: str | None = None, docker: str = "docker") -> dict:
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    output = urlparse(spec.output_path or "")
    if output.scheme != "file":
        raise UsageError("with --local, --output-path must be file:///dir")
    inputs = []
    for name, uri in spec.channels.items():
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise UsageError(f"channel {name}={uri!r}: SDK 3 local container mode reads file:///dir channels")
        inputs.append(InputData(channel_name=name, data_source=parsed.path))
    prepare_local_environment()
    base = spec.base_job_name
    # The folder name becomes the compose project: unique, so only this job's containers are read and removed.
    scratch = Path(tempfile.mkdtemp(prefix="smvision-local-"))
    project = f"{TRAINING_PROJECT_PREFIX}{uuid.uuid4().hex[:10]}"
    root = scratch / project
    root.mkdir()
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=spec.image_uri,
        role=spec.role,
        base_job_name=base,
        hyperparameters=dict(spec.hyperparameters),
        compute=Compute(instance_type="local_gpu" if gpu else "local_cpu", instance_count=spec.instance_count),
        local_container_root=str(root),
    )
    try:
        failure = None
        try:
            trainer.train(input_data_config=inputs, wait=True, logs=True)
        except RuntimeError as err:  # compose exited non-zero: the host results below say which
            failure = err
        hosts = _project_containers(project, docker)
        check_hosts(hosts or {"algo-1": (None, None)})
        if failure is not None:
            raise LocalJobError(f"local training failed: {failure}")
        destination = Path(output.path) / (job_name or base)
        destination.mkdir(parents=True, exist_ok=True)
        model_tar = destination / "model.tar.gz"
        shutil.copyfile(root / "compressed_artifacts" / "model.tar.gz", model_tar)
        output_tar = root / "compressed_artifacts" / "output.tar.gz"
        if output_tar.exists():
            shutil.copyfile(output_tar, destination / "output.tar.gz")
        return {
            "training_job": job_name or base,
            "model_data": model_tar.as_uri(),
            "instance_count": spec.instance_count,
            "hosts": {host: code for host, (_, code) in sorted(hosts.items())},
            "sdk": "sagemaker 3 local container mode",
        }
    finally:
        ids = [cid for cid, _ in _project_containers(project, docker).values()]
        if ids:
            subprocess.run([docker, "rm", "-f", *ids], check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
