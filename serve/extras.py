"""What a request may ask of our classifier besides its answer (container.attributes'
RequestOptions, from the custom attributes): a Grad-CAM explanation of the top class,
flip test-time augmentation, and the abstain flag (serve.codec).

Where each part runs, so that a request asking for more never holds up plain ones:
- plain requests: as always, the micro-batcher (or the inference pool): nothing here;
- flip TTA: the image and its mirror go through the same micro-batcher as 2N rows of
  one request, and the two answers are averaged (vision.tta);
- explain: the inference pool, never the micro-batcher, whose forwards run without
  autograd and would wait for a backward pass. Grad-CAM costs about one plain forward
  (vision.explain); its heatmap's PNG overlay and the JSON are made in the encode step,
  on the decode pool, off the inference threads and the event loop.

Grad-CAM is set up on first use (its graph split costs 0.1-0.3 s for a ResNet, more
for larger families), or at load when SM_VISION_CUSTOM_ATTRIBUTES asks every request
for it; a model Grad-CAM cannot explain (a ViT, TorchScript) answers 400 saying why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
from dataclasses import dataclass

import torch

from container import ConfigError
from container.attributes import RequestOptions
from serve.errors import BadInput
from serve.handler import Call, Handler
from serve.model import Classifier, warm_up_images
from serve.runner import BatchRunner
from vision import explain, tta

log = logging.getLogger("serve")


@dataclass
class Prediction:
    """A forward's calibrated probabilities and what the request asked for besides."""

    probabilities: torch.Tensor  # N x classes
    explanation: explain.Explanation | None = None
    inputs: torch.Tensor | None = None  # the model input rows the overlay is drawn on

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
        return Prediction(cat("probabilities"), explanation, cat("inputs"))


class Extras:
    """The per-request extras of one hosted classifier (no user hooks)."""

    def __init__(self, name: str, classifier: Classifier, pool: concurrent.futures.Executor, batcher: BatchRunner | None):
        self.name, self.classifier, self.pool, self.batcher = name, classifier, pool, batcher
        self._lock = threading.Lock()
        self._cam: explain.GradCAM | None = None
        self._cam_refused: str | None = None

    def prepare(self, defaults: RequestOptions) -> None:
        """At load: set up what every request will ask for (SM_VISION_CUSTOM_ATTRIBUTES),
        so a model that cannot do it fails its load with the reason, not each request."""
        try:
            if defaults.explain is not None:
                self.gradcam()
        except BadInput as err:
            raise ConfigError(f"SM_VISION_CUSTOM_ATTRIBUTES: {err.message}") from None

    # --- the forward (HostedModel.invoke awaits it) -----------------------------------

    async def forward(self, data: torch.Tensor, options: RequestOptions) -> torch.Tensor | Prediction:
        if options.explain is not None:
            return await asyncio.wrap_future(self.pool.submit(self.explain, data, options))
        if options.tta is not None:
            mirrored = tta.with_mirrors(data)  # one request of 2N rows: batched with the others
            if self.batcher is not None:
                probabilities = await self.batcher.run(mirrored)
            else:
                probabilities = await asyncio.wrap_future(self.pool.submit(self.classifier.probabilities, mirrored))
            return tta.mean_of_mirrors(probabilities)
        raise AssertionError(f"nothing for extras to do in {options}")

    def gradcam(self) -> explain.GradCAM:
        """The model's Grad-CAM, set up once (the first explained request, or load)."""
        with self._lock:
            if self._cam is None and self._cam_refused is None:
                classifier = self.classifier
                example = classifier.prepare(classifier.preprocess(warm_up_images(classifier.spec.image_size)[1])[None])
                try:
                    self._cam = explain.GradCAM(classifier.module, example)
                except explain.ExplainUnsupported as err:
                    self._cam_refused = f"explain=gradcam is not available for this model: {err}"
                    log.warning("model %s: %s", self.name, self._cam_refused)
                else:
                    log.info("model %s: Grad-CAM on %s (%dx%d map)", self.name, self._cam.layer, *self._cam.grid)
            if self._cam is None:
                raise BadInput(self._cam_refused)
            return self._cam

    def explain(self, batch: torch.Tensor, options: RequestOptions) -> Prediction:
        """Grad-CAM of each row's top class, and the calibrated probabilities of the same
        forward (equal to the plain path's). On an inference thread, not in inference mode."""
        cam, classifier = self.gradcam(), self.classifier
        with classifier.precision.autocast():
            result = cam(classifier.prepare(batch))
        probabilities = classifier.calibrated(result.logits).cpu()
        return Prediction(probabilities, result, batch if options.overlay else None)

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
        return rows

    def encode(self, handler: Handler, outputs: list[Prediction], request: Call) -> tuple[bytes, str]:
        """The answer, by the default output step with each image's extra fields."""
        prediction = Prediction.join(outputs)
        request.fields = self.fields(prediction, request.options)
        return handler.encode(prediction.probabilities, request)

    @property
    def alive(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._cam = None
