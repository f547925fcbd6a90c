"""Experiment tracking from the main process: MLflow and TensorBoard.

fit() makes four calls, on every rank (the others get a tracker that does nothing):

    tracker = tracking.start(config, process, paths, dataset)  # one run per job, params logged
    tracker.log_epoch(row, train_images)              # per-epoch metrics, step = epoch
    tracker.summary()                                 # {"mlflow": {"run_id": ...}} for metrics.json
    tracker.finish(final, output_dir, model_dir)      # final metrics (calibration too), artifacts, end of run

MLflow runs only when MLFLOW_TRACKING_URI is set, through the bounded client every
command shares (container.tracking). Tracking is never worth a failed job: the first
error from the tracking server logs one warning and MLflow stays off for the rest of
the job.

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
from container import tracking as mlflow_client
from vision.artifact import BASELINE_FILE, SPEC_FILE

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "sagemaker-vision"
# Per-epoch row keys (train.loop) logged as metrics, and their TensorBoard tags.
EPOCH_SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "val_macro_f1": "macro_f1/val",
    "val_map": "map/val",
    "lr": "learning_rate",
    "images_per_s": "images_per_s",
    "epoch_time_s": "epoch_time_s",
}
# What write_outputs leaves in the output and model directories, logged as artifacts.
OUTPUT_ARTIFACTS = (
    "metrics.json",
    "data_check.json",
    "classification_report.txt",
    "confusion_matrix.png",
    "learning_curves.png",
    "reliability_diagram.png",
)
# The final split's calibration (train.calibration), logged with the final metrics.
CALIBRATION_METRICS = ("temperature", "ece_before", "ece_after")


def start(config, process, paths: SageMakerPaths, dataset: dict | None = None, environ=None) -> Tracker:
    """The job's tracker: MLflow and/or TensorBoard on the main process, nothing elsewhere.
    `dataset` is the data check's summary (train.data_report): logged as `data.*` params,
    and the fingerprint also as the run's `dataset_fingerprint` tag, to find every run of
    one dataset version."""
    environ = os.environ if environ is None else environ
    if not process.is_main:
        return Tracker([])
    params = {**config.to_dict(), **dataset_params(dataset or {})}
    sinks: list = []
    uri = mlflow_client.tracking_uri(environ)
    if uri:
        experiment = config.mlflow_experiment or environ.get(mlflow_client.EXPERIMENT_ENV_VAR) or DEFAULT_EXPERIMENT
        tags = {"dataset_fingerprint": dataset["fingerprint"]} if dataset else {}
        sinks.append(MlflowSink(uri, experiment, training_job_name(environ), params, tags))
    tensorboard_dir = Path(config.tensorboard_dir) if config.tensorboard_dir else read_tensorboard_dir(paths)
    if tensorboard_dir is not None:
        sinks.append(TensorBoardSink(tensorboard_dir))
    return Tracker(sinks)


def dataset_params(summary: dict) -> dict:
    """{"data.fingerprint": ..., "data.images.train": ..., "data.leakage": ...}: the check
    summary flattened into MLflow params."""
    flat = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update({f"data.{key}.{name}": item for name, item in value.items()})
        else:
            flat[f"data.{key}"] = value
    return flat


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
        files = [output_dir / name for name in OUTPUT_ARTIFACTS] + [model_dir / SPEC_FILE, model_dir / BASELINE_FILE]
        for sink in self.sinks:
            sink.finish(metrics, [path for path in files if path.is_file()])


class MlflowSink:
    """One MLflow run for the job, through MlflowClient (no global active run)."""

    def __init__(self, uri: str, experiment: str, run_name: str | None, params: dict, tags: dict | None = None):
        self.uri, self.experiment = uri, experiment
        self.client = self.run_id = self.experiment_id = None
        self.last_step = 0
        try:
            # Failures reach us as exceptions and become the single warning below.
            client = mlflow_client.open_client(uri)
            self.experiment_id = mlflow_client.experiment_id(client, experiment)
            tags = {"mlflow.source.name": "sagemaker-vision train", "mlflow.source.type": "JOB", **(tags or {})}
            self.run_id = client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
            self.client = client
            # A job that dies (exception, signal) leaves its run FAILED, not RUNNING forever.
            atexit.register(self._end, "FAILED")
            mlflow_client.log_params(client, self.run_id, params)
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
