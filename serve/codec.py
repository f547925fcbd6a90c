"""Request bodies -> a batch of model inputs; probabilities -> the JSON answer.

Supported Content-Types (parameters such as charset are ignored):
    image/* , application/x-image, application/octet-stream   one image, any Pillow format
    application/json    {"image": b64} | {"url": u} | {"instances": [item, ...]} | [item, ...]
                        where item is a base64 string, {"image"|"b64": b64} or {"url": u}
    application/jsonlines   one such JSON object per line (batch transform, SplitType=None)
    application/x-npy   uint8 HxWx3 / NxHxWx3 images, or float 3xHxW / Nx3xHxW model input
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from container import ServeConfig
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

    image: images.ImageLimits  # pixels, aspect ratio, JPEG draft size
    max_batch: int  # items in one request (SM_VISION_MAX_BATCH_ITEMS); batch transform decodes this many at a time
    fetch: FetchPolicy

    @classmethod
    def from_config(cls, config: ServeConfig, draft_min_side: int) -> DecodeLimits:
        """draft_min_side: with SM_VISION_JPEG_DRAFT, the smallest side a JPEG is decoded at
        (twice the model's resize size)."""
        image = images.ImageLimits(config.max_image_pixels, config.max_aspect_ratio, draft_min_side if config.jpeg_draft else 0)
        return cls(image, config.max_batch_items, FetchPolicy.from_config(config))


@dataclass
class Decoded:
    inputs: torch.Tensor  # N x C x H x W, ready for the model
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


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Client bytes -> upright 8-bit RGB, by the decoder training uses (vision.images)."""
    if not data:
        raise BadInput("empty image body")
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


def _item_bytes(item: object, limits: DecodeLimits) -> bytes:
    data = item_image(item)
    return fetch_url(item["url"], limits.fetch) if data is None else data


def _parse_json(text: bytes) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"body is not valid JSON: {err}") from None
    except RecursionError:  # thousands of nested brackets
        raise BadInput("body is not valid JSON: nested too deeply") from None


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


def _load_npy(body: bytes) -> np.ndarray:
    """np.load, after checking that the header's shape fits in the body: numpy
    allocates the declared size before reading, so a 100-byte body claiming a
    terabyte would be a MemoryError (500) or worse."""
    buffer = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buffer)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(buffer)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if dtype.hasobject or declared > len(body) - buffer.tell():
            raise ValueError(f"the header declares {list(shape)} {dtype} ({declared} bytes) but the body holds {len(body) - buffer.tell()}")
        return np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError, SyntaxError) as err:
        raise BadInput(f"body is not a .npy array: {str(err)[:200]}") from None


def parse(body: bytes, content_type: str | None, limits: DecodeLimits, item_cap: bool = True) -> Parsed:
    """The request's items. item_cap=False (batch transform, decoded in chunks) accepts
    as many items as the payload limit lets in."""
    ctype = media_type(content_type)
    if is_image_type(ctype):
        return Parsed("image", [body], batch=False)
    if ctype == NPY:
        parsed = _parse_array(_load_npy(body))
    elif ctype == JSON or ctype in JSONLINES:
        if ctype in JSONLINES:
            parsed = Parsed("json", [_parse_json(line) for line in body.splitlines() if line.strip()], batch=True, lines=True)
        else:
            parsed = Parsed("json", *json_items(_parse_json(body)))
    else:
        raise UnsupportedMediaType(f"Content-Type {content_type or '(none)'!r} is not supported; use one of: {SUPPORTED}")
    if len(parsed) == 0 or (item_cap and len(parsed) > limits.max_batch):
        raise Unprocessable(f"batch of {len(parsed)} inputs; send 1 to {limits.max_batch}")
    return parsed


def to_inputs(parsed: Parsed, preprocess: Callable, limits: DecodeLimits, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Items [start, stop) of a parsed request as an N x C x H x W model input."""
    items = parsed.items[start:stop]
    if parsed.kind == "tensor":
        return torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    if parsed.kind == "frames":
        try:
            rgb = [images.array_to_rgb(frame, limits.image) for frame in items]
        except images.ImageRejected as err:
            raise _image_error(err) from None
        return torch.stack([preprocess(image) for image in rgb])
    if parsed.kind == "image":
        return torch.stack([preprocess(open_image(data, limits)) for data in items])
    return torch.stack([preprocess(open_image(_item_bytes(item, limits), limits)) for item in items])


def decode(body: bytes, content_type: str | None, preprocess: Callable, limits: DecodeLimits) -> Decoded:
    """The request as model input, all at once (at most limits.max_batch items).
    Raises the typed errors of serve.errors."""
    parsed = parse(body, content_type, limits)
    return Decoded(to_inputs(parsed, preprocess, limits), parsed.batch, parsed.lines)


def top_k_result(probs: torch.Tensor, classes: tuple[str, ...], k: int, abstain_below: float | None = None) -> dict:
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


def encode(
    probs: torch.Tensor,
    classes: tuple[str, ...],
    k: int,
    decoded: Decoded,
    abstain_below: float | None = None,
    extras: list[dict] | None = None,
) -> bytes:
    """The JSON (or JSON Lines) answer; `extras` adds fields to each image's answer."""
    results = [top_k_result(row, classes, k, abstain_below) for row in probs]
    for result, fields in zip(results, extras or (), strict=False):
        result.update(fields)
    if decoded.lines:
        return "".join(json.dumps(result) + "\n" for result in results).encode()
    return json.dumps(results if decoded.batch else results[0]).encode()
