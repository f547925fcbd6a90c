"""What a request may ask of our classifier besides its answer (container.attributes'
RequestOptions, from the custom attributes): a Grad-CAM explanation of the top class,
the penultimate-layer embedding, an out-of-distribution score against the artifact's
monitoring baseline, flip test-time augmentation, and the abstain flag (serve.codec).

Where each part runs, so that a request asking for more never holds up plain ones:
- plain requests: as always, the micro-batcher (or the inference pool): nothing here;
- flip TTA: the image and its mirror go through the same micro-batcher as 2N rows of
  one request, and the two answers are averaged (vision.tta);
- embedding / OOD score: a second micro-batcher (same pool, same batch shape) whose
  forward also returns the penultimate features, taken by the monitor's hook on the
  classification head (vision.features.PenultimateTap: the same forward, no second
  one); the OOD score is vision.baseline's, against the artifact's monitoring/;
- explain: the inference pool, never the micro-batcher, whose forwards run without
  autograd and would wait for a backward pass. Grad-CAM costs about one plain forward
  (vision.explain); its heatmap's PNG overlay and the JSON are made in the encode step,
  on the decode pool, off the inference threads and the event loop.

Beside ONNX Runtime (serve.hosting makes the extras at the first request that asks for
one), Grad-CAM and the features run on the same weights loaded on torch fp32; flip TTA
stays on the served engine's micro-batcher.

Grad-CAM and the feature hook are set up on first use (Grad-CAM's graph split costs
0.1-0.3 s for a ResNet, more for larger families), or at load when
SM_VISION_CUSTOM_ATTRIBUTES asks every request for them; a model that cannot do what is
asked (a ViT for Grad-CAM, TorchScript, no baseline for an OOD score) answers 400
saying why. Until then the served module carries no hook: plain answers are untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from container import ConfigError, ServeConfig
from container.attributes import RequestOptions
from serve import codec, payloads
from serve.errors import BadInput
from serve.handler import Call, Handler
from serve.model import Classifier, warm_up_images
from serve.runner import BatchRunner
from vision import explain, tta
from vision.artifact import BASELINE_FILE
from vision.baseline import Baseline
from vision.features import PenultimateTap

log = logging.getLogger("serve")


@dataclass
class Prediction:
    """A forward's calibrated probabilities and what the request asked for besides."""

    probabilities: torch.Tensor  # N x classes
    explanation: explain.Explanation | None = None
    inputs: torch.Tensor | None = None  # the model input rows the overlay is drawn on
    features: torch.Tensor | None = None  # N x D penultimate-layer features (float32)

    @staticmethod
    def join(parts: list[Prediction]) -> Prediction:
        """The predictions of a request's chunks (batch transform) as one."""
        if len(parts) == 1:
            return parts[0]

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(part, name) for part in parts]
            return None if values[0] is None else torch.cat(values)

        explanation = None
        if parts[0].explanation is not None:
            first = parts[0].explanation
            explanation = dataclasses.replace(
                first,
                logits=torch.cat([part.explanation.logits for part in parts]),
                class_index=torch.cat([part.explanation.class_index for part in parts]),
                saliency=torch.cat([part.explanation.saliency for part in parts]),
            )
        return Prediction(cat("probabilities"), explanation, cat("inputs"), cat("features"))


class Extras:
    """The per-request extras of one hosted classifier (no user hooks)."""

    def __init__(self, name: str, served: Classifier, model_dir: Path, config: ServeConfig, pool, batcher: BatchRunner | None, observe):
        self.name, self.served, self.config, self.pool, self.batcher, self.observe = name, served, config, pool, batcher, observe
        # Grad-CAM and the penultimate features need the torch module: the served one, or
        # beside another engine the same weights on torch fp32 (the answers of those
        # requests are then torch fp32's; flip TTA stays on the served engine).
        self.classifier = served
        if served.engine != "torch":
            from serve.engines import load_classifier

            self.classifier = load_classifier(model_dir, served.device, "fp32", "torch", threads=config.threads, workers=config.workers)
        self._lock = threading.Lock()
        self._cam: explain.GradCAM | None = None
        self._tap: PenultimateTap | None = None
        self._feature_batcher: BatchRunner | None = None
        self._refused: dict[str, str] = {}  # what this model cannot do, and why
        self.baseline, self.baseline_id = None, None
        if (model_dir / BASELINE_FILE).exists():
            try:
                self.baseline, self.baseline_id = Baseline.load(model_dir)
            except ConfigError as err:  # the monitor's files are optional: plain answers need none of them
                log.warning("model %s: no OOD scores: %s", name, err)
                self._refused["ood"] = f"ood=true is not available: {err}"
        else:
            self._refused["ood"] = f"ood=true needs the model's monitoring baseline ({BASELINE_FILE}), made by `monitor baseline`"

    def prepare(self, defaults: RequestOptions) -> None:
        """At load: set up what every request will ask for (SM_VISION_CUSTOM_ATTRIBUTES),
        so a model that cannot do it fails its load with the reason, not each request."""
        try:
            self.check(defaults)
            if defaults.explain is not None:
                self.gradcam()
            if defaults.features:
                self.tap()
        except BadInput as err:
            raise ConfigError(f"SM_VISION_CUSTOM_ATTRIBUTES: {err.message}") from None

    def check(self, options: RequestOptions) -> None:
        """400 for what this model cannot answer, before any work (HostedModel.call)."""
        if options.ood and "ood" in self._refused:
            raise BadInput(self._refused["ood"])

    # --- the forward (HostedModel.invoke awaits it) -----------------------------------

    async def forward(self, data: torch.Tensor, options: RequestOptions) -> torch.Tensor | Prediction:
        if options.explain is not None:
            return await asyncio.wrap_future(self.pool.submit(self.explain, data, options))
        if options.features:
            if self.batcher is not None:
                probabilities, features = await self.feature_batcher().run(data)
            else:
                probabilities, features = await asyncio.wrap_future(self.pool.submit(self.features, data))
            return Prediction(probabilities, features=features)
        if options.tta is not None:
            mirrored = tta.with_mirrors(data)  # one request of 2N rows: batched with the others
            if self.batcher is not None:
                probabilities = await self.batcher.run(mirrored)
            else:
                probabilities = await asyncio.wrap_future(self.pool.submit(self.served.probabilities, mirrored))
            return tta.mean_of_mirrors(probabilities)
        raise AssertionError(f"nothing for extras to do in {options}")

    def feature_batcher(self) -> BatchRunner:
        """The micro-batcher of embedding and OOD requests, started on first use."""
        with self._lock:
            if self._feature_batcher is None:
                config = self.config
                self._feature_batcher = BatchRunner(
                    self.features,
                    config.max_batch_size,
                    config.max_batch_delay_ms,
                    executor=self.pool,
                    concurrency=config.workers,
                    observe=self.observe,
                )
            return self._feature_batcher

    def tap(self) -> PenultimateTap:
        """The hook that keeps the classification head's input (set up once)."""
        with self._lock:
            if self._tap is None and "features" not in self._refused:
                try:
                    self._tap = PenultimateTap(self.classifier.module)
                except Exception as err:  # noqa: BLE001 - TorchScript, no head, a module without hooks: all mean the same
                    self._refused["features"] = f"output=embedding and ood need the model's classification head: {err}"
                    log.warning("model %s: %s", self.name, self._refused["features"])
            if self._tap is None:
                raise BadInput(self._refused["features"])
            return self._tap

    @torch.inference_mode()
    def features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibrated probabilities, penultimate features) of one forward, in the served precision."""
        tap, classifier = self.tap(), self.classifier
        with classifier.autocast():
            logits, features = tap.forward(classifier.prepare(batch))
            return classifier.calibrated(logits), features.float().cpu()

    def gradcam(self) -> explain.GradCAM:
        """The model's Grad-CAM, set up once (the first explained request, or load)."""
        with self._lock:
            if self._cam is None and "explain" not in self._refused:
                classifier = self.classifier
                example = classifier.prepare(classifier.preprocess(warm_up_images(classifier.spec.image_size)[1])[None])
                try:
                    self._cam = explain.GradCAM(classifier.module, example)
                except explain.ExplainUnsupported as err:
                    self._refused["explain"] = f"explain=gradcam is not available for this model: {err}"
                    log.warning("model %s: %s", self.name, self._refused["explain"])
                else:
                    log.info("model %s: Grad-CAM on %s (%dx%d map)", self.name, self._cam.layer, *self._cam.grid)
            if self._cam is None:
                raise BadInput(self._refused["explain"])
            return self._cam

    def explain(self, batch: torch.Tensor, options: RequestOptions) -> Prediction:
        """Grad-CAM of each row's top class, and the calibrated probabilities of the same
        forward (equal to the plain path's). On an inference thread, not in inference mode."""
        cam, classifier = self.gradcam(), self.classifier
        with classifier.autocast():
            result = cam(classifier.prepare(batch))
        probabilities = classifier.calibrated(result.logits)
        features = self.features(batch)[1] if options.features else None  # a second forward: the head ran with autograd
        return Prediction(probabilities, result, torch.as_tensor(batch) if options.overlay else None, features)

    # --- the answer (on the decode pool) ------------------------------------------------

    def fields(self, prediction: Prediction, options: RequestOptions) -> list[dict]:
        """Each image's extra answer fields."""
        rows = [{} for _ in range(prediction.probabilities.shape[0])]
        spec = self.classifier.spec
        if prediction.explanation is not None:
            for row, fields in enumerate(rows):
                overlay = None
                if prediction.inputs is not None:
                    overlay = explain.overlay_png(prediction.inputs[row], prediction.explanation.saliency[row], spec.mean, spec.std)
                fields["explanation"] = explain.describe(prediction.explanation, row, self.classifier.classes, overlay)
        if options.output == "embedding":
            for row, fields in enumerate(rows):
                fields["embedding"] = prediction.features[row].tolist()
        if options.ood:
            distances = self.baseline.ood_distance(prediction.features.numpy())
            percentiles, p_values = self.baseline.ood_percentile(distances=distances), self.baseline.ood_p_value(distances=distances)
            for row, fields in enumerate(rows):
                fields["ood"] = {"percentile": float(percentiles[row]), "p_value": float(p_values[row]), "baseline_id": self.baseline_id}
        return rows

    def encode(self, handler: Handler, outputs: list[Prediction], request: Call) -> tuple[bytes, str]:
        """The answer, by the default output step with each image's extra fields."""
        prediction = Prediction.join(outputs)
        if request.out_type == codec.NPY:  # an embedding request that asked for the N x D array
            return payloads.encode_npy(prediction.features.numpy()), codec.NPY
        request.fields = self.fields(prediction, request.options)
        return handler.encode(prediction.probabilities, request)

    def nbytes(self) -> int:
        """What the extras hold besides the served model: the torch copy, if any."""
        return self.classifier.nbytes() if self.classifier is not self.served else 0

    @property
    def alive(self) -> bool:
        return self._feature_batcher is None or self._feature_batcher.alive

    def close(self) -> None:
        if self._feature_batcher is not None:
            self._feature_batcher.close()
        with self._lock:
            if self._tap is not None:
                self._tap.close()
            self._cam = self._tap = None
