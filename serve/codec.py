"""Request bodies -> a batch of model inputs; probabilities -> the JSON answer.

Supported Content-Types (parameters such as charset are ignored):
    image/* , application/x-image, application/octet-stream   one image, any Pillow format
    application/json    {"image": b64} | {"url": u} | {"instances": [item, ...]} | [item, ...]
                        where item is a base64 string, {"image"|"b64": b64} or {"url": u}
    application/jsonlines   one such JSON object per line (batch transform, SplitType=None)
    application/x-npy   uint8 HxWx3 / NxHxWx3 images, or float 3xHxW / Nx3xHxW model input

Answers (Accept application/json, or application/jsonlines: one line per image), in the
shape SM_VISION_RESPONSE_SHAPE names or Accept's `shape` parameter asks for
(`application/json; shape=prediction`):
    labels      {"predicted_label", "confidence", "probabilities", "top_k"}; a multi-label
                model: {"predicted_labels" (each class at or above its threshold),
                "probabilities" (sigmoid per class), "thresholds", "top_k"}
    prediction  the built-in Image Classification algorithm's {"prediction": [p0, p1, ...]}

Model input is a float32 N x C x H x W numpy array, whatever engine runs it. No torch.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from container import ServeConfig
from container.serving import RESPONSE_SHAPES
from serve import arrays
from serve.deadline import Deadline
from serve.decode_pool import DecodePool, needs_worker
from serve.errors import BadInput, NotAcceptable, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from serve.fetch import FetchPolicy, fetch_url
from vision import images

IMAGE_TYPES = {"application/x-image", "application/octet-stream"}
JSON = "application/json"
JSONLINES = {"application/jsonlines", "application/jsonl", "application/x-jsonlines"}
NPY = "application/x-npy"
SUPPORTED = "image/*, application/x-image, application/octet-stream, application/json, application/jsonlines, application/x-npy"


@dataclass(frozen=True)
class DecodeLimits:
    """What one request may ask of the decoder: ServeConfig's request limits (from_config)
    plus the JPEG draft size of the model being served."""

    image: images.ImageLimits  # pixels, aspect ratio, decode bytes, JPEG scans and draft size
    max_batch: int  # items in one request (SM_VISION_MAX_BATCH_ITEMS); batch transform decodes this many at a time
    fetch: FetchPolicy
    arrays: arrays.ArrayLimits  # .npy bodies (and a model's tensor payloads: serve.payloads)

    @classmethod
    def from_config(cls, config: ServeConfig, draft_min_side: int) -> DecodeLimits:
        """draft_min_side: with SM_VISION_JPEG_DRAFT, the smallest side a JPEG is decoded at
        (twice the model's resize size)."""
        image = images.ImageLimits(
            max_pixels=config.max_image_pixels,
            max_aspect_ratio=config.max_aspect_ratio,
            draft_min_side=draft_min_side if config.jpeg_draft else 0,
            max_decode_bytes=config.max_decode_bytes,
            max_jpeg_scans=config.max_jpeg_scans,
        )
        array = arrays.ArrayLimits(max_bytes=config.max_array_bytes)
        return cls(image, config.max_batch_items, FetchPolicy.from_config(config), array)


@dataclass
class Decoded:
    inputs: np.ndarray  # N x C x H x W, ready for the model
    batch: bool  # the client sent a list: answer with a list
    lines: bool = False  # jsonlines in, jsonlines out


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def is_image_type(ctype: str) -> bool:
    return ctype.startswith("image/") or ctype in IMAGE_TYPES


def check_accept(accept: str | None, also: tuple[str, ...] = ()) -> str:
    """The answer's type: JSON unless Accept rules it out (then 406), or one of `also`
    when Accept names it first (an embedding request may ask for application/x-npy)."""
    if not accept or not accept.strip():
        return JSON
    for part in accept.split(","):
        kind = media_type(part)
        if kind in (JSON, "application/*", "*/*", "*") or kind in JSONLINES:
            return JSON
        if kind in also:
            return kind
    raise NotAcceptable(f"cannot produce {accept!r}; this endpoint answers {', '.join((JSON, *also))}")


def open_image(data: bytes, limits: DecodeLimits, deadline: Deadline | None = None, pool: DecodePool | None = None) -> Image.Image:
    """Client bytes -> upright 8-bit RGB, by the decoder training uses (vision.images).
    A decode whose cost is not bounded by its pixels (needs_worker: a multi-scan JPEG,
    TIFF) runs in `pool`, killed at the deadline; the rest here, bounded by the limits."""
    if not data:
        raise BadInput("empty image body")
    if pool is not None and deadline is not None and needs_worker(data):
        return pool.decode(data, limits.image, deadline.at, deadline.gone)
    try:
        return images.load_rgb(data, limits.image)
    except images.ImageRejected as err:
        raise _image_error(err) from None


def _image_error(err: images.ImageRejected) -> Exception:
    if isinstance(err, images.ImageTooLarge):
        return PayloadTooLarge(str(err))
    if isinstance(err, images.ImageUnsupported):
        return Unprocessable(str(err))
    return BadInput(str(err))


# The keys of a JSON item that hold a base64 image (the monitor reads captured requests by them too).
IMAGE_KEYS = ("image", "b64", "image_bytes", "data")


def base64_image(value: object) -> bytes:
    """A base64 image as a JSON item holds it: a string, a data URL, or {"b64": string}."""
    if isinstance(value, dict) and "b64" in value:
        value = value["b64"]
    if not isinstance(value, str):
        raise BadInput("base64 image must be a string")
    if value.startswith("data:") and "," in value:  # data URL
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("image is not valid base64") from None


def item_image(item: object) -> bytes | None:
    """The image bytes of one JSON item; None for a {"url": ...} item, which only the
    server fetches (the monitor never does)."""
    if isinstance(item, str):
        return base64_image(item)
    if isinstance(item, dict):
        for key in IMAGE_KEYS:
            if key in item:
                return base64_image(item[key])
        if "url" in item:
            return None
    raise Unprocessable('each input must be a base64 string, {"image": base64} or {"url": "https://..."}')


def _item_bytes(item: object, limits: DecodeLimits, deadline: Deadline | None = None) -> bytes:
    data = item_image(item)
    if data is None:  # a URL fetch ends at the request's deadline too
        return fetch_url(item["url"], limits.fetch, deadline=deadline.at if deadline is not None else None)
    return data


def json_items(payload: object) -> tuple[list, bool]:
    """A JSON body's items, and whether the client sent a list."""
    if isinstance(payload, list):
        return payload, True
    if isinstance(payload, dict):
        if "instances" in payload:
            if not isinstance(payload["instances"], list):
                raise Unprocessable("'instances' must be a list")
            return payload["instances"], True
        return [payload], False
    raise Unprocessable('JSON body must be an object ({"image": ...}, {"url": ...}, {"instances": [...]}) or a list')


@dataclass
class Parsed:
    """A request split into its items, not yet turned into tensors, so a large batch
    transform request can be decoded and run a chunk at a time."""

    kind: str  # "image" (bytes), "json" (JSON items), "frames" (uint8 HxW[xC] arrays), "tensor" (float Nx3xHxW)
    items: object  # a list, or an array sliced along its first axis
    batch: bool
    lines: bool = False

    def __len__(self) -> int:
        return len(self.items)


def _parse_array(array: np.ndarray) -> Parsed:
    if array.dtype == np.uint8 and array.ndim in (2, 3, 4):
        batch = array.ndim == 4
        frames = array if batch else array[None]
        if frames.ndim == 3 or frames.shape[-1] in (1, 3, 4):
            return Parsed("frames", frames, batch)
    if np.issubdtype(array.dtype, np.floating) and array.ndim in (3, 4) and array.shape[-3] == 3:
        batch = array.ndim == 4
        return Parsed("tensor", array if batch else array[None], batch)
    raise Unprocessable(
        f"array of shape {list(array.shape)} and dtype {array.dtype} is neither uint8 images "
        "(HxWx3 or NxHxWx3) nor float model input (3xHxW or Nx3xHxW)"
    )


def parse(body: bytes, content_type: str | None, limits: DecodeLimits, item_cap: bool = True, value: object = None) -> Parsed:
    """The request's items. item_cap=False (batch transform, decoded in chunks) accepts
    as many items as the payload limit lets in. `value`: a JSON body already parsed
    (serve.handler tells images from numbers on it), so it is parsed once."""
    ctype = media_type(content_type)
    if is_image_type(ctype):
        return Parsed("image", [body], batch=False)
    if ctype == NPY:
        parsed = _parse_array(arrays.load_npy(body, limits.arrays))
    elif ctype in JSONLINES:
        parsed = Parsed("json", arrays.load_json_lines(body, limits.arrays), batch=True, lines=True)
    elif ctype == JSON:
        parsed = Parsed("json", *json_items(arrays.load_json(body, limits.arrays) if value is None else value))
    else:
        raise UnsupportedMediaType(f"Content-Type {content_type or '(none)'!r} is not supported; use one of: {SUPPORTED}")
    if len(parsed) == 0 or (item_cap and len(parsed) > limits.max_batch):
        raise Unprocessable(f"batch of {len(parsed)} inputs; send 1 to {limits.max_batch}")
    return parsed


def stack(inputs: list) -> np.ndarray:
    """Preprocessed images (numpy arrays, or the CPU tensors of torch's transform, read
    without a copy) as one float32 batch."""
    return np.stack([np.asarray(one, dtype=np.float32) for one in inputs])


def _checked(items, deadline: Deadline | None):
    """items, the request's deadline checked before each: work stops between items once
    the answer is due or gone."""
    for item in items:
        if deadline is not None:
            deadline.check()
        yield item


def to_inputs(
    parsed: Parsed,
    preprocess: Callable,
    limits: DecodeLimits,
    start: int = 0,
    stop: int | None = None,
    deadline: Deadline | None = None,
    pool: DecodePool | None = None,
) -> np.ndarray:
    """Items [start, stop) of a parsed request as an N x C x H x W model input, each
    decoded or fetched within what is left of `deadline`."""
    items = parsed.items[start:stop]
    if parsed.kind == "tensor":
        return np.ascontiguousarray(items, dtype=np.float32)
    if parsed.kind == "frames":
        try:
            rgb = [images.array_to_rgb(frame, limits.image) for frame in _checked(items, deadline)]
        except images.ImageRejected as err:
            raise _image_error(err) from None
        return stack([preprocess(image) for image in rgb])
    if parsed.kind == "image":
        return stack([preprocess(open_image(data, limits, deadline, pool)) for data in _checked(items, deadline)])
    return stack(
        [preprocess(open_image(_item_bytes(item, limits, deadline), limits, deadline, pool)) for item in _checked(items, deadline)]
    )


def decode(body: bytes, content_type: str | None, preprocess: Callable, limits: DecodeLimits) -> Decoded:
    """The request as model input, all at once (at most limits.max_batch items).
    Raises the typed errors of serve.errors."""
    parsed = parse(body, content_type, limits)
    return Decoded(to_inputs(parsed, preprocess, limits), parsed.batch, parsed.lines)


def response_shape(accept: str | None, default: str) -> str:
    """The answer's shape: the `shape` parameter of Accept's JSON type (application/json;
    shape=prediction), else `default` (SM_VISION_RESPONSE_SHAPE)."""
    for part in (accept or "").split(","):
        _, *params = part.split(";")
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "shape":
                value = value.strip().strip('"').lower()
                if value not in RESPONSE_SHAPES:
                    raise NotAcceptable(f"Accept {accept!r}: shape={value!r} is not one of {', '.join(RESPONSE_SHAPES)}")
                return value
    return default


def wants_json_lines(accept: str | None) -> bool:
    """Whether Accept names JSON Lines (batch transform's answer: one line per image)."""
    return any(media_type(part) in JSONLINES for part in (accept or "").split(","))


def top_k_result(probs: np.ndarray, classes: tuple[str, ...], k: int, abstain_below: float | None = None) -> dict:
    """One image's answer; `"abstained": true` when its top-1 probability is below
    `abstain_below` (the answer still names the label and carries the top k)."""
    values = probs.tolist()
    order = sorted(range(len(values)), key=values.__getitem__, reverse=True)
    result = {
        "predicted_label": classes[order[0]],
        "confidence": values[order[0]],
        "probabilities": {name: value for name, value in zip(classes, values, strict=False)},
        "top_k": [{"label": classes[i], "probability": values[i]} for i in order[:k]],
    }
    if abstain_below is not None and values[order[0]] < abstain_below:
        result["abstained"] = True
    return result


def multi_label_result(probs: np.ndarray, classes: tuple[str, ...], k: int, thresholds: tuple[float, ...]) -> dict:
    """A multi-label model's answer: every class whose sigmoid reaches its threshold (the
    ones chosen on the validation split, stored in the model spec), most probable first."""
    values = probs.tolist()
    order = sorted(range(len(values)), key=values.__getitem__, reverse=True)
    return {
        "predicted_labels": [classes[i] for i in order if values[i] >= thresholds[i]],
        "probabilities": {name: value for name, value in zip(classes, values, strict=False)},
        "thresholds": {name: value for name, value in zip(classes, thresholds, strict=False)},
        "top_k": [{"label": classes[i], "probability": values[i]} for i in order[:k]],
    }


def encode(
    probs: np.ndarray,
    classes: tuple[str, ...],
    k: int,
    decoded: Decoded,
    shape: str = "labels",
    thresholds=None,
    abstain_below: float | None = None,
    extras: list[dict] | None = None,
) -> bytes:
    """The answer for each row of `probs`; `thresholds` (per class) makes it multi-label;
    `extras` adds fields to each image's answer (serve.extras)."""
    if shape == "prediction":
        results = [{"prediction": row.tolist()} for row in probs]
    elif thresholds is not None:
        results = [multi_label_result(row, classes, k, thresholds) for row in probs]
    else:
        results = [top_k_result(row, classes, k, abstain_below) for row in probs]
    for result, fields in zip(results, extras or (), strict=False):
        result.update(fields)
    if decoded.lines:
        return "".join(json.dumps(result) + "\n" for result in results).encode()
    return json.dumps(results if decoded.batch else results[0]).encode()
