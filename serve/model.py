"""Our classifier as served, whichever engine runs it, and where its files come from.

/opt/ml/model may hold the files directly or a model.tar.gz (local runs; SageMaker
extracts it for us): `prepare_model_dir`. A Classifier is the artifact's spec
(vision/artifact.py) and an engine's forward; serve.engines chooses the engine:

    TorchClassifier (serve.torch_model)        torch: fp32, bf16, fp16; CPU or GPU
    OnnxRuntimeClassifier (serve.onnx_model)   ONNX Runtime: fp32, int8; CPU

Each engine's `probabilities(batch)` is its forward with nothing of ours between it and
the caller (one frame); what the spec says about answers (the temperature, a sigmoid
per class for a multi-label model) applies to every engine's logits in one place,
`Classifier.scores` (vision.scores). Batches are float32 N x 3 x H x W numpy arrays; a
torch tensor in (a user's hook) gives a torch tensor out. At warm-up the accuracy guard
(vision.guard) keeps a reduced precision only if it agrees with fp32.

No torch here: the torch-free image serves through this module.
"""

from __future__ import annotations

import concurrent.futures
import logging
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from serve.archive import ExtractLimits, extract_model_archive
from vision import guard, scores
from vision.artifact import SPEC_FILE, ModelSpec
from vision.engines.calibration import load_calibration
from vision.engines.preprocess import normalize

log = logging.getLogger(__name__)

ARCHIVE = "model.tar.gz"
GUARD_CHUNK = 8  # images per guard forward: a bounded batch, whatever the sample's size


def prepare_model_dir(model_dir: Path, scratch: Path, limits: ExtractLimits) -> Path:
    """The directory holding the model files: model_dir itself, or `scratch` with
    model_dir/model.tar.gz extracted into it (serve.archive's checked extraction)."""
    archive = model_dir / ARCHIVE
    if not archive.is_file() or (model_dir / SPEC_FILE).exists():
        return model_dir
    extract_model_archive(archive, scratch, limits)
    log.info("extracted %s into %s", archive, scratch)
    return scratch


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def calibration_sample(model_dir: Path, spec: ModelSpec) -> np.ndarray | None:
    """The artifact's calibration crops (uint8 N x H x W x 3), or None when its spec names
    none (trained before they existed, or with export_onnx=false) or the file is unusable."""
    if not spec.calibration_file or not (model_dir / spec.calibration_file).is_file():
        return None
    try:
        return load_calibration(model_dir, spec.image_size, spec.calibration_file)
    except (ValueError, OSError) as err:
        log.warning("ignoring %s: %s", spec.calibration_file, err)
        return None


def warm_up_images(size: int) -> list[Image.Image]:
    """Deterministic, varied inputs for the warm-up (and the guard of a model that carries
    no calibration sample): flat grey, a colour gradient, a checkerboard and seeded noise."""
    grey = Image.new("RGB", (size, size), (127, 127, 127))
    ramp = np.broadcast_to(np.linspace(0, 255, size).astype(np.uint8), (size, size))
    gradient = np.stack([ramp, ramp.T, ramp[:, ::-1]], axis=-1)
    checker = (((np.arange(size)[:, None] // 8 + np.arange(size)[None, :] // 8) % 2) * 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    arrays = (gradient, np.repeat(checker[..., None], 3, axis=-1), noise)
    return [grey, *(Image.fromarray(np.ascontiguousarray(a)) for a in arrays)]


def _as_torch(array: np.ndarray):
    """Probabilities for a caller that passed a torch tensor (a user's hook): torch is loaded then."""
    import torch

    return torch.from_numpy(array)


class Classifier:
    """The engine-independent part: spec, classes, the answer rules, warm-up and the
    guard. An engine subclass provides preprocess, probabilities (the served forward),
    logits and reference_logits (for the guard), fall_back and nbytes."""

    engine = ""  # "torch" or "onnxruntime"

    def __init__(self, spec: ModelSpec, device: str, precision: str, cpu_class: str, calibration: np.ndarray | None, workers: int = 1):
        self.spec = spec
        self.classes = spec.classes
        self.device = device
        self.precision = precision  # fp32, bf16, fp16 or int8: what is served now
        self.cpu_class = cpu_class
        self.calibration = calibration  # uint8 crops, or None
        self.workers = workers  # concurrent forwards: the guard's chunks run that many at once
        # A multi-label model's classes are independent: a sigmoid each, decided at its threshold.
        self.thresholds = (spec.thresholds or (0.5,) * spec.num_classes) if spec.multi_label else None
        self.guard: guard.GuardResult | None = None  # the guard at warm-up's result

    # --- what every engine's answer goes through -----------------------------------------

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """The served probabilities of `logits` (N x classes, from any engine)."""
        return scores.probabilities(logits, self.spec.temperature, self.spec.multi_label)

    def answer(self, logits: np.ndarray, batch) -> np.ndarray:
        probabilities = self.scores(logits)
        return probabilities if isinstance(batch, np.ndarray) else _as_torch(probabilities)

    def describe(self) -> str:
        """engine, precision and the CPU class, for the ready line."""
        where = f", CPU class {self.cpu_class}" if self.device == "cpu" else ""
        return f"engine {self.engine}, precision {self.precision}{self.pending_note()}{where}"

    def pending_note(self) -> str:
        """What describe() adds while a reduced precision waits for its guard (none here)."""
        return ""

    def guard_state(self) -> tuple[str, str] | None:
        """(precision checked, running | passed | failed | stopped) for /metrics; None: no guard ran."""
        if self.guard is None:
            return None
        return self.guard.precision, "passed" if self.guard.passed else "failed"

    def close(self) -> None:
        """The model is unloaded or the server stops: end what runs beside the requests."""

    # --- warm-up and the guard -------------------------------------------------------------

    def check_batch(self) -> np.ndarray:
        """What the guard compares on: the calibration crops (real training images) when the
        artifact carries them, else the synthetic warm-up images."""
        if self.calibration is not None:
            return normalize(self.calibration, self.spec.mean, self.spec.std)
        return np.stack([np.asarray(self.preprocess(image), dtype=np.float32) for image in warm_up_images(self.spec.image_size)])

    def warm_up(self) -> None:
        """First forwards (allocations, kernel choice) before traffic, and the accuracy
        guard: a reduced precision stays only if it agrees with fp32."""
        batch = self.check_batch()
        if self.precision in guard.PROBABILITY_BOUNDS:
            self.guard = self.check(batch)
        self.probabilities(batch[:1])
        self.calibration = None  # only the guard needed it

    def check(self, batch: np.ndarray) -> guard.GuardResult:
        reference = self._in_chunks(self.reference_logits, batch)
        result = guard.compare(self.precision, reference, self._in_chunks(self.logits, batch))
        if result.passed:
            log.info("accuracy guard: %s kept (%s)", self.precision, result.summary())
        else:
            log.warning("accuracy guard: %s; serving fp32 instead", result.summary())
            self.fall_back()
        return result

    def _in_chunks(self, forward, batch: np.ndarray) -> np.ndarray:
        chunks = [batch[start : start + GUARD_CHUNK] for start in range(0, len(batch), GUARD_CHUNK)]
        with concurrent.futures.ThreadPoolExecutor(max(1, self.workers), thread_name_prefix="guard") as pool:
            return np.concatenate(list(pool.map(forward, chunks)))

    # --- per engine ----------------------------------------------------------------------

    def preprocess(self, image: Image.Image):
        raise NotImplementedError

    def probabilities(self, batch):
        raise NotImplementedError

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """float32 logits in the served precision."""
        raise NotImplementedError

    def reference_logits(self, batch: np.ndarray) -> np.ndarray:
        """float32 logits in fp32, on the same engine where it can."""
        raise NotImplementedError

    def fall_back(self) -> None:
        """Serve fp32 from now on (the guard saw the reduced precision disagree)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        raise NotImplementedError
