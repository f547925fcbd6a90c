"""The opt-in MMS backend: multi-model-server + sagemaker-inference, as AWS's images
run them, with our model loading and codecs as the default handlers. The user's
inference.py is found by sagemaker-inference itself (SAGEMAKER_PROGRAM, default
inference.py, in /opt/ml/model/code), so hooks behave exactly as on AWS's images.

`serve --backend mms` calls start(); MMS imports this module in each worker and calls
handle(data, context). sagemaker_inference reads the environment at import, so it is
imported only inside the functions here.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from container import ServingEnv
from serve import codec, hooks
from serve.cli import decode_limits, default_top_k
from serve.errors import ServeError

_service = None


def _limits() -> codec.DecodeLimits:
    # MMS workers inherit the container's environment: derive the limits exactly as
    # the default server does, so both backends refuse the same requests.
    return decode_limits(ServingEnv.from_env())


def _handler_class():
    from sagemaker_inference import errors
    from sagemaker_inference.default_inference_handler import DefaultInferenceHandler

    def typed(func):
        @functools.wraps(func)  # sagemaker-inference counts parameters via inspect.signature
        def wrapped(*args):
            try:
                return func(*args)
            except ServeError as err:  # keep our status codes (MMS adds its own body)
                raise errors.GenericInferenceToolkitError(err.status, err.message) from None

        return wrapped

    class VisionInferenceHandler(DefaultInferenceHandler):
        """Our defaults in sagemaker-inference's shape; the user's hooks replace them."""

        def default_model_fn(self, model_dir):
            import torch

            from serve.model import load_classifier, prepare_model_dir
            from train.devices import select_device

            torch.set_num_threads(max(1, int(os.environ.get("SM_VISION_TORCH_THREADS", "1"))))
            model = load_classifier(prepare_model_dir(Path(model_dir), Path("/tmp/sm-vision-mms")), select_device())
            model.warm_up()
            self.classes = model.classes
            return model

        @typed
        def default_input_fn(self, input_data, content_type):
            data = input_data.encode() if isinstance(input_data, str) else input_data
            return codec.decode(data, content_type, self.preprocess, _limits())

        @typed
        def default_predict_fn(self, data, model):
            decoded = data if isinstance(data, codec.Decoded) else None
            output = hooks.predict(decoded.inputs if decoded else data, model)
            return (decoded, output) if hasattr(model, "probabilities") else output

        @typed
        def default_output_fn(self, prediction, accept):
            codec.check_accept(accept)
            if not isinstance(prediction, tuple) or not self.classes:  # the user's model: AWS's nested lists
                return hooks.to_json(prediction), codec.JSON
            decoded, probs = prediction
            decoded = decoded or codec.Decoded(probs, batch=probs.shape[0] > 1)
            k = min(default_top_k(), len(self.classes))
            return codec.encode(probs, self.classes, k, decoded), codec.JSON

    return VisionInferenceHandler


def handle(data, context):
    """MMS entry point: initialise on the first (None) call, then transform requests."""
    global _service
    if _service is None:
        from sagemaker_inference.default_handler_service import DefaultHandlerService
        from sagemaker_inference.transformer import Transformer

        handler = _handler_class()()
        transformer = Transformer(default_inference_handler=handler)
        _service = DefaultHandlerService(transformer=transformer)
        _service.initialize(context)
        # The codec needs the model's transforms; the model comes from model_fn (ours or the user's).
        model = transformer._model
        handler.preprocess = getattr(model, "preprocess", None) or _imagenet_preprocess()
        handler.classes = getattr(handler, "classes", None) or getattr(model, "classes", ())
    if data is None:
        return None
    return _service.handle(data, context)


def _imagenet_preprocess():
    from train.presets import eval_transform

    return eval_transform(224)


def start(model_root: Path, workers: int | None, torch_threads: int) -> None:
    """Hand the process to sagemaker-inference's model server (blocks until MMS exits)."""
    os.environ.setdefault("SAGEMAKER_BASE_DIR", str(model_root))
    os.environ.setdefault("SM_VISION_TORCH_THREADS", str(torch_threads))
    if workers:
        os.environ.setdefault("SAGEMAKER_MODEL_SERVER_WORKERS", str(workers))
    from sagemaker_inference import model_server

    model_server.start_model_server(handler_service=__name__ + ":handle")
