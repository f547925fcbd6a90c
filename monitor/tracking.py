"""One MLflow run per monitoring run, when MLFLOW_TRACKING_URI is set.

As the trainer does (train/tracking.py): mlflow is imported only then, its HTTP client's
retries and timeouts are bounded (a user's own MLFLOW_HTTP_REQUEST_* values win), and a
tracking server's failure is one warning, never a failed monitoring job. The run holds
the window and thresholds as parameters, the check statistics as metrics (the same
numbers as the CloudWatch records) and the output files as artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

TRACKING_URI_ENV_VAR = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV_VAR = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "sagemaker-vision-monitor"
# 2 retries, backoff factor 1, 10 s per request: a dead server costs seconds, not minutes.
CLIENT_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
PARAM_LIMIT = 6000  # characters MLflow keeps of a parameter value


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
    uri = environ.get(TRACKING_URI_ENV_VAR, "").strip()
    if not uri:
        return None
    for name, value in CLIENT_LIMITS.items():
        os.environ.setdefault(name, value)
    run_id = None
    client = None
    try:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "urllib3.connectionpool"):
            logging.getLogger(name).setLevel(logging.ERROR)  # one outage is one warning below, not a dozen lines
        client = MlflowClient(tracking_uri=uri)
        experiment = environ.get(EXPERIMENT_ENV_VAR) or DEFAULT_EXPERIMENT
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        all_tags = {"mlflow.source.name": "sagemaker-vision monitor", "mlflow.source.type": "JOB", **tags}
        run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        items = [Param(key, str(value)[:PARAM_LIMIT]) for key, value in sorted(params.items())]
        for first in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=items[first : first + 100])
        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, 0) for key, value in sorted(metrics.items())]
        for first in range(0, len(entries), 1000):
            client.log_batch(run_id, metrics=entries[first : first + 1000])
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
