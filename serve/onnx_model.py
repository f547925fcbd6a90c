"""The ONNX Runtime engine: our classifier as model.onnx (fp32) or model.int8.onnx
(int8), preprocessed in PIL and numpy (vision/engines/preprocess.py). No torch, unless
a file must be exported at load.

The files come from the artifact (the trainer writes them; vision/artifact.py). What it
lacks is made at load, once, in the model's scratch directory:

    model.onnx       exported from the weights (needs torch: the full image only)
    model.int8.onnx  quantized from model.onnx on the artifact's calibration sample, the
                     trainer's recipe (vision/engines/quantize.py); never calibrated on
                     synthetic images, whose ranges are nothing like real photos

Threads: each session gets config.threads intra-op threads (the container's CPUs shared
by the concurrent forwards; ONNX Runtime's own default is one per physical core of the
*host*), and its idle threads spin only when one forward has the cores to itself.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from container import ConfigError
from serve.background_guard import BackgroundGuard
from serve.machine import has_torch, torch_missing
from serve.model import Classifier, is_torchscript
from vision.artifact import INT8_FILE, ONNX_FILE, ModelSpec
from vision.engines.accuracy import Int8Check
from vision.engines.onnx_runtime import OnnxClassifier
from vision.engines.preprocess import EvalPreprocess, normalize

log = logging.getLogger(__name__)

EXPORT_CHECK_IMAGES = 8  # calibration crops the export is checked on (torch vs ONNX Runtime)


class OnnxRuntimeClassifier(Classifier):
    """One ONNX Runtime session serving; for int8, the fp32 model is the guard's reference
    and the fallback. `wait_for_guard` False (the server's default): fp32 is served from
    the start and int8 only once its guard passes in the background (serve.background_guard)."""

    engine = "onnxruntime"

    def __init__(
        self,
        spec: ModelSpec,
        fp32: Path,
        int8: Path | None,
        preprocess,
        cpu_class: str,
        calibration,
        threads: int,
        workers: int,
        wait_for_guard: bool = True,
    ):
        deferred = int8 is not None and not wait_for_guard
        served = "int8" if int8 is not None and not deferred else "fp32"
        super().__init__(spec, "cpu", served, cpu_class, calibration, workers)
        self.fp32_path, self.int8_path = fp32, int8
        self.threads, self.spinning = threads, workers == 1  # spinning threads would take the cores other forwards need
        self.served = self._session(int8 if served == "int8" else fp32)
        self.pending = "int8" if deferred else None  # served once the background guard passes
        self.background: BackgroundGuard | None = None
        self._reference: OnnxClassifier | None = None
        self._preprocess = preprocess

    def _session(self, path: Path) -> OnnxClassifier:
        return OnnxClassifier(path, threads=self.threads, spinning=self.spinning)

    def preprocess(self, image):
        return self._preprocess(image)

    def probabilities(self, batch):
        """The served probabilities of `batch`: the session's run, then the answer rules."""
        return self.answer(self.served.logits(np.asarray(batch, dtype=np.float32)), batch)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.served.logits(batch)

    def reference_logits(self, batch: np.ndarray) -> np.ndarray:
        if self._reference is None:
            self._reference = self.served if self.int8_path is None else self._session(self.fp32_path)
        return self._reference.logits(batch)

    def fall_back(self) -> None:
        self.served, self.precision = self._reference or self._session(self.fp32_path), "fp32"

    def warm_up(self) -> None:
        batch = self.check_batch() if self.pending else None
        super().warm_up()
        self._reference = None  # the fp32 session stays only if it is the one served
        if self.pending:
            self.background = BackgroundGuard(self.pending, batch, self._guard_forwards, self._switch)

    def _guard_forwards(self):
        """fp32 and int8 for the background guard: one thread each, never spinning."""
        reference = OnnxClassifier(self.fp32_path, threads=1, spinning=False)
        candidate = OnnxClassifier(self.int8_path, threads=1, spinning=False)
        return reference.logits, candidate.logits

    def _switch(self, sample: np.ndarray) -> str:
        """Serve int8 from now on: its serving session is opened and warmed on `sample`
        first, then swapped in by one assignment (a forward runs wholly on one session or
        the other)."""
        session = self._session(self.int8_path)
        session.logits(sample)
        self.served = session
        self.precision, self.pending = "int8", None
        return self.describe()

    def pending_note(self) -> str:
        return " (int8 once its accuracy guard passes, running in the background)" if self.pending else ""

    def guard_state(self) -> tuple[str, str] | None:
        if self.background is not None:
            return self.background.precision, self.background.state
        return super().guard_state()

    def close(self) -> None:
        if self.background is not None:
            self.background.stop()

    def nbytes(self) -> int:
        held = self.served.path.stat().st_size
        if self.background is not None and self.background.state == "running":  # its own fp32 and int8 sessions
            held += self.fp32_path.stat().st_size + self.int8_path.stat().st_size
        return held


def eval_preprocess(spec: ModelSpec):
    """The spec's evaluation preprocessing without torch, or (full image) torch's own for
    what that cannot reproduce."""
    try:
        return EvalPreprocess.from_spec(spec)
    except ValueError as err:
        if not has_torch():
            raise torch_missing(f"its preprocessing has no torch-free equivalent ({err})") from None
        from vision.presets import eval_transform_for

        return eval_transform_for(spec)


def load(
    model_dir: Path,
    spec: ModelSpec,
    precision: str,
    cpu_class: str,
    calibration,
    scratch: Path,
    threads: int,
    workers: int,
    wait_for_guard: bool = True,
):
    """Our artifact on ONNX Runtime. `precision`: int8 (needs model.int8.onnx or the
    calibration sample to make it), fp32, or auto = int8 when the artifact carries a
    calibration sample for the guard and int8 did not fail the trainer's accuracy check
    (spec.int8_check), else fp32. `wait_for_guard`: see OnnxRuntimeClassifier."""
    preprocess = eval_preprocess(spec)
    fp32 = fp32_model(model_dir, spec, scratch, calibration)
    int8 = None
    if precision == "auto" and spec.int8_failed_check:
        log.info("serving fp32: int8 failed the trainer's accuracy check (%s)", Int8Check.from_dict(spec.int8_check).summary())
    elif precision == "int8" or (precision == "auto" and calibration is not None):
        if spec.int8_failed_check:
            log.warning(
                "SM_VISION_PRECISION=int8 although int8 failed the trainer's accuracy check (%s)",
                Int8Check.from_dict(spec.int8_check).summary(),
            )
        int8 = int8_model(model_dir, spec, scratch, fp32, calibration, required=precision == "int8")
    return OnnxRuntimeClassifier(spec, fp32, int8, preprocess, cpu_class, calibration, threads, workers, wait_for_guard)


def fp32_model(model_dir: Path, spec: ModelSpec, scratch: Path, calibration) -> Path:
    if spec.onnx_file and (model_dir / spec.onnx_file).is_file():
        return model_dir / spec.onnx_file
    if not has_torch():
        raise torch_missing(f"the model has no {ONNX_FILE} (trained before the trainer wrote one, or with export_onnx=false)")
    weights = model_dir / spec.weights_file
    if not weights.is_file():
        raise ConfigError(f"{weights} is missing (model_spec.json names weights_file={spec.weights_file!r}) and there is no {ONNX_FILE}")
    if weights.suffix == ".pt2" or is_torchscript(weights):
        raise ConfigError(f"{spec.weights_file} is not a state dict: only the trainer's weights are exported to ONNX at load")
    import torch

    from vision.engines.export import export_onnx, load_trained

    started = time.perf_counter()
    scratch.mkdir(parents=True, exist_ok=True)
    check = None if calibration is None else torch.from_numpy(normalize(calibration[:EXPORT_CHECK_IMAGES], spec.mean, spec.std))
    path = export_onnx(load_trained(model_dir)[1], spec.image_size, scratch / ONNX_FILE, check)
    log.info("exported the model to %s at load in %.1f s (the artifact has no %s)", path, time.perf_counter() - started, ONNX_FILE)
    return path


def int8_model(model_dir: Path, spec: ModelSpec, scratch: Path, fp32: Path, calibration, required: bool) -> Path | None:
    if spec.int8_file and (model_dir / spec.int8_file).is_file():
        return model_dir / spec.int8_file
    if calibration is None:
        if required:
            raise ConfigError(f"SM_VISION_PRECISION=int8: the model has neither {INT8_FILE} nor a calibration sample to make it")
        return None
    from vision.engines.quantize import quantize_int8

    started = time.perf_counter()
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        path = quantize_int8(fp32, scratch / INT8_FILE, normalize(calibration, spec.mean, spec.std))
    except Exception as err:  # noqa: BLE001 - the quantizer's failures have no common type
        if required:
            raise ConfigError(f"SM_VISION_PRECISION=int8: quantizing {fp32.name} failed: {err}") from None
        log.warning("serving fp32: quantizing %s at load failed: %s", fp32.name, err)
        return None
    log.info("quantized the model to %s at load in %.1f s (the artifact has no %s)", path, time.perf_counter() - started, INT8_FILE)
    return path
