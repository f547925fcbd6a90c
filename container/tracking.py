"""MLflow as every command of the image uses it (`train` and `monitor`): the variables
that switch it on, a client whose HTTP retries and timeouts are bounded, the
experiment by name, and parameters in batches.

MLflow runs only when MLFLOW_TRACKING_URI is set (an http(s) URI, or a SageMaker
tracking-server ARN that the sagemaker-mlflow plugin resolves); mlflow is imported
only then, inside these functions. The client's limits are MLflow's own variables
(MLFLOW_HTTP_REQUEST_MAX_RETRIES / _BACKOFF_FACTOR / _TIMEOUT), set here unless the
user set them: a dead tracking server costs seconds, not minutes. What a tracking
failure means (one warning, never a failed job) is each caller's to say.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

TRACKING_URI_ENV_VAR = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV_VAR = "MLFLOW_EXPERIMENT_NAME"
# 2 retries with a 1 s backoff factor and 10 s per request, instead of MLflow's defaults
# (7 retries, factor 2, 120 s: minutes per call).
CLIENT_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
PARAM_LIMIT = 6000  # characters MLflow keeps of a parameter value
PARAMS_PER_BATCH = 100  # MLflow takes at most 100 parameters per log_batch
METRICS_PER_BATCH = 1000  # ... and at most 1000 metrics


def tracking_uri(environ: Mapping[str, str] | None = None) -> str | None:
    """The tracking server, or None when tracking is off."""
    uri = (os.environ if environ is None else environ).get(TRACKING_URI_ENV_VAR, "").strip()
    return uri or None


def open_client(uri: str):
    """An MlflowClient for `uri` with the bounded HTTP limits. MLflow logs a warning per
    HTTP retry (urllib3) and per failing request-header plugin, so one outage would be a
    dozen lines: those loggers are quieted, and failures reach the caller as exceptions."""
    for name, value in CLIENT_LIMITS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, name: str) -> str:
    """The id of the experiment called `name`, created when it does not exist."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def log_params(client, run_id: str, params: Mapping[str, object]) -> None:
    """Every parameter, as text cut to what MLflow keeps, in batches it accepts."""
    from mlflow.entities import Param

    items = [Param(key, str(value)[:PARAM_LIMIT]) for key, value in sorted(params.items())]
    for first in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[first : first + PARAMS_PER_BATCH])


def log_metrics(client, run_id: str, metrics: Mapping[str, float], timestamp_ms: int, step: int = 0) -> None:
    """Every metric at one step, in batches MLflow accepts."""
    from mlflow.entities import Metric

    entries = [Metric(key, float(value), timestamp_ms, step) for key, value in sorted(metrics.items())]
    for first in range(0, len(entries), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=entries[first : first + METRICS_PER_BATCH])
