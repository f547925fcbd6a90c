"""Experiment tracking from the main process: MLflow and TensorBoard.

fit() makes four calls, on every rank (the others get a tracker that does nothing):

    tracker = tracking.start(config, process, paths)  # one run per job, params logged
    tracker.log_epoch(row, train_images)              # per-epoch metrics, step = epoch
    tracker.summary()                                 # {"mlflow": {"run_id": ...}} for metrics.json
    tracker.finish(final, output_dir, model_dir)      # final metrics (calibration too), artifacts, end of run

MLflow runs only when MLFLOW_TRACKING_URI is set (an http(s) URI, or a SageMaker
tracking-server ARN that the sagemaker-mlflow plugin resolves); mlflow is not imported
otherwise. Tracking is never worth a failed job: the first error from the tracking server
logs one warning and MLflow stays off for the rest of the job. The client's retries and
timeouts are bounded (MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT, defaults below, a
user's own values win) so a dead server costs seconds, not minutes.

TensorBoard scalars go to config.tensorboard_dir, else the job's TensorBoardOutputConfig
path, else /opt/ml/output/tensorboard when that directory exists, through tensorboardX
(it writes the same event files as tensorboard without its ~58 MB of dependencies).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import time
from pathlib import Path

from container import SageMakerPaths, read_tensorboard_dir, training_job_name
from vision.artifact import SPEC_FILE

log = logging.getLogger(__name__)

TRACKING_URI_ENV_VAR = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV_VAR = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "sagemaker-vision"
# Bounds on MLflow's HTTP client: 2 retries with a 1 s backoff factor and 10 s per
# request, instead of MLflow's defaults (7 retries, factor 2, 120 s: minutes per call).
CLIENT_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# Per-epoch row keys (train.loop) logged as metrics, and their TensorBoard tags.
EPOCH_SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "val_macro_f1": "macro_f1/val",
    "lr": "learning_rate",
    "images_per_s": "images_per_s",
    "epoch_time_s": "epoch_time_s",
}
# What write_outputs leaves in the output and model directories, logged as artifacts.
OUTPUT_ARTIFACTS = ("metrics.json", "classification_report.txt", "confusion_matrix.png", "learning_curves.png", "reliability_diagram.png")
# The final split's calibration (train.calibration), logged with the final metrics.
CALIBRATION_METRICS = ("temperature", "ece_before", "ece_after")
MLFLOW_PARAM_LIMIT = 6000  # characters MLflow keeps of a param value


def start(config, process, paths: SageMakerPaths, environ=None) -> Tracker:
    """The job's tracker: MLflow and/or TensorBoard on the main process, nothing elsewhere."""
    environ = os.environ if environ is None else environ
    if not process.is_main:
        return Tracker([])
    params = config.to_dict()
    sinks: list = []
    uri = environ.get(TRACKING_URI_ENV_VAR, "").strip()
    if uri:
        experiment = config.mlflow_experiment or environ.get(EXPERIMENT_ENV_VAR) or DEFAULT_EXPERIMENT
        sinks.append(MlflowSink(uri, experiment, training_job_name(environ), params))
    tensorboard_dir = Path(config.tensorboard_dir) if config.tensorboard_dir else read_tensorboard_dir(paths)
    if tensorboard_dir is not None:
        sinks.append(TensorBoardSink(tensorboard_dir))
    return Tracker(sinks)


def numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Tracker:
    def __init__(self, sinks: list):
        self.sinks = sinks

    def log_epoch(self, row: dict, train_images: int) -> None:
        # Images per second of the epoch's wall time (training and validation).
        scalars = {**row, "images_per_s": train_images / row["epoch_time_s"] if row.get("epoch_time_s") else 0.0}
        values = {key: float(scalars[key]) for key in EPOCH_SCALARS if numeric(scalars.get(key))}
        for sink in self.sinks:
            sink.log_epoch(int(row["epoch"]), values)

    def summary(self) -> dict:
        """What metrics.json records about where the run was tracked."""
        out: dict = {}
        for sink in self.sinks:
            out.update(sink.summary())
        return out

    def finish(self, final: dict, output_dir: Path, model_dir: Path) -> None:
        split = final.get("split", "test")
        prefix = "test" if split == "test" else "final_val"
        metrics = {f"{prefix}_{key}": float(final[key]) for key in ("loss", "acc", "macro_f1") if numeric(final.get(key))}
        calibration = final.get("calibration") or {}
        metrics.update({key: float(calibration[key]) for key in CALIBRATION_METRICS if numeric(calibration.get(key))})
        files = [output_dir / name for name in OUTPUT_ARTIFACTS] + [model_dir / SPEC_FILE]
        for sink in self.sinks:
            sink.finish(metrics, [path for path in files if path.is_file()])


class MlflowSink:
    """One MLflow run for the job, through MlflowClient (no global active run)."""

    def __init__(self, uri: str, experiment: str, run_name: str | None, params: dict):
        for name, value in CLIENT_LIMITS.items():
            os.environ.setdefault(name, value)
        self.uri, self.experiment = uri, experiment
        self.client = self.run_id = self.experiment_id = None
        self.last_step = 0
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            # MLflow logs a warning per HTTP retry (urllib3) and per failing request-header
            # plugin; one outage would be a dozen lines. Failures reach us as exceptions and
            # become the single warning below.
            for name in ("mlflow", "urllib3.connectionpool"):
                logging.getLogger(name).setLevel(logging.ERROR)
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            tags = {"mlflow.source.name": "sagemaker-vision train", "mlflow.source.type": "JOB"}
            self.run_id = client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
            self.client = client
            # A job that dies (exception, signal) leaves its run FAILED, not RUNNING forever.
            atexit.register(self._end, "FAILED")
            items = [Param(key, str(value)[:MLFLOW_PARAM_LIMIT]) for key, value in sorted(params.items())]
            for first in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(self.run_id, params=items[first : first + 100])
        except Exception as err:  # noqa: BLE001 - any failure of the tracking server or the plugin
            self._give_up(err)
            return
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, experiment, _redacted(uri))

    def _give_up(self, err: Exception) -> None:
        """The one warning of a job whose tracking server failed; MLflow is off after it."""
        if self.client is not None:
            atexit.unregister(self._end)
        self.client = None
        log.warning("MLflow tracking is off for the rest of this job (%s: %s); training continues", type(err).__name__, err)

    def _call(self, method: str, *args, **kwargs) -> None:
        if self.client is None:
            return
        try:
            getattr(self.client, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a tracking server's failure of any kind must not fail training
            self._give_up(err)

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if self.client is None:
            return
        now = int(time.time() * 1000)
        self.last_step = epoch
        self._call("log_batch", self.run_id, metrics=[Metric(key, value, now, epoch) for key, value in values.items()])

    def summary(self) -> dict:
        if self.run_id is None:
            return {}
        return {"mlflow": {"run_id": self.run_id, "experiment_id": self.experiment_id, "experiment": self.experiment}}

    def finish(self, metrics: dict[str, float], files: list[Path]) -> None:
        from mlflow.entities import Metric

        if self.client is None:
            return
        now = int(time.time() * 1000)
        self._call("log_batch", self.run_id, metrics=[Metric(key, value, now, self.last_step) for key, value in metrics.items()])
        for path in files:
            self._call("log_artifact", self.run_id, str(path))
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        if self.client is None:
            return
        atexit.unregister(self._end)
        self._call("set_terminated", self.run_id, status)
        self.client = None


class TensorBoardSink:
    """Scalars per epoch (step = epoch), flushed each epoch so an uploader sees them."""

    def __init__(self, directory: Path):
        self.directory = directory
        try:
            from tensorboardX import SummaryWriter

            directory.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(logdir=str(directory))
        except Exception as err:  # noqa: BLE001 - a read-only or full disk must not fail training
            self.writer = None
            log.warning("TensorBoard: cannot write to %s (%s); no event files for this job", directory, err)
            return
        self.last_step = 0
        log.info("TensorBoard: writing scalars to %s", directory)

    def _write(self, values: dict[str, float], step: int, tags: dict[str, str]) -> None:
        if self.writer is None:
            return
        try:
            for key, value in values.items():
                self.writer.add_scalar(tags.get(key, key), value, global_step=step)
            self.writer.flush()
        except Exception as err:  # noqa: BLE001 - a full disk or lost mount must not fail training
            log.warning("TensorBoard: writing to %s failed (%s); no more event files for this job", self.directory, err)
            self.writer = None

    def log_epoch(self, epoch: int, values: dict[str, float]) -> None:
        self.last_step = epoch
        self._write(values, epoch, EPOCH_SCALARS)

    def summary(self) -> dict:
        return {"tensorboard_dir": str(self.directory)} if self.writer is not None else {}

    def finish(self, metrics: dict[str, float], files: list[Path]) -> None:
        self._write(metrics, self.last_step, {key: key.replace("_", "/", 1) for key in metrics})
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _redacted(uri: str) -> str:
    """The URI without a user:password part, for the log."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
