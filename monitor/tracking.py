"""One MLflow run per monitoring run, when MLFLOW_TRACKING_URI is set.

Through the bounded client the trainer uses too (container.tracking): mlflow is
imported only then, and a tracking server's failure is one warning, never a failed
monitoring job. The run holds the window and thresholds as parameters, the check
statistics as metrics (the same numbers as the CloudWatch records) and the output files
as artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from container import tracking as mlflow_client

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "sagemaker-vision-monitor"


def log_run(
    params: Mapping[str, object],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    files: list[Path],
    run_name: str | None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The MLflow run id, or None when tracking is off or failed (logged once)."""
    environ = os.environ if environ is None else environ
    uri = mlflow_client.tracking_uri(environ)
    if not uri:
        return None
    run_id = None
    client = None
    try:
        client = mlflow_client.open_client(uri)  # one outage is one warning below, not a dozen lines
        experiment = mlflow_client.experiment_id(client, environ.get(mlflow_client.EXPERIMENT_ENV_VAR) or DEFAULT_EXPERIMENT)
        all_tags = {"mlflow.source.name": "sagemaker-vision monitor", "mlflow.source.type": "JOB", **tags}
        run_id = client.create_run(experiment, run_name=run_name, tags=all_tags).info.run_id
        mlflow_client.log_params(client, run_id, params)
        mlflow_client.log_metrics(client, run_id, metrics, int(time.time() * 1000))
        for path in files:
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
    except Exception as err:  # noqa: BLE001 - a tracking server's failure of any kind must not fail monitoring
        log.warning("MLflow tracking failed (%s: %s); the monitoring results are unaffected", type(err).__name__, err)
        if client is not None and run_id is not None:
            with contextlib.suppress(Exception):  # the server is already failing
                client.set_terminated(run_id, "FAILED")
        return None
    log.info("MLflow: run %s", run_id)
    return run_id
