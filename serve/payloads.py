"""Tensor payloads of a model that is not our classifier, as AWS's PyTorch inference
toolkit decodes and encodes them by default.

Requests (Content-Type):
    application/json     nested lists of numbers -> float32 tensor
    text/csv             rows of numbers -> 2-D float32 tensor (one row: 1 x columns)
    application/x-npy    one non-empty .npy array of numbers (bool, int, float, complex; no pickles)
    application/x-npz    an .npz archive holding one such array, stored or deflated (np.savez[_compressed])
Each is read by serve.arrays: shape, dtype and size checked before the one allocation,
within SM_VISION_MAX_ARRAY_MB.
Answers (the first type of Accept we produce; none or */* -> JSON):
    application/json        nested lists               [[0.1, 0.9]]
    text/csv                one line per row            0.1,0.9
    application/x-npy       the array as .npy bytes
    application/jsonlines   one JSON list per row       [0.1, 0.9]
"""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from serve import arrays
from serve.errors import NotAcceptable, Unprocessable, UnsupportedMediaType

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
JSONLINES = "application/jsonlines"
JSONLINES_ALIASES = {JSONLINES, "application/jsonl", "application/x-jsonlines"}
DECODES = (JSON, CSV, NPY, NPZ)
ENCODES = (JSON, CSV, NPY, JSONLINES)


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


# --- requests -------------------------------------------------------------------
# Every array is read by serve.arrays, its size and dtype checked before it is allocated.


def to_tensor(array: np.ndarray) -> torch.Tensor:
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError as err:  # dtypes torch has no tensor for
        raise Unprocessable(f"cannot make a tensor of dtype {array.dtype}: {err}") from None


def decode(body: bytes, content_type: str | None, limits: arrays.ArrayLimits | None = None, value: object = None) -> torch.Tensor:
    """The body of a tensor Content-Type as a tensor (on the CPU), within `limits` (the
    served defaults when None). `value`: a JSON body already parsed, so it is parsed once."""
    ctype, limits = media_type(content_type), limits or arrays.ArrayLimits()
    if ctype == JSON:
        array = arrays.json_tensor(arrays.load_json(body, limits) if value is None else value, limits)
        if array is None:
            raise Unprocessable("JSON body must be nested lists of numbers")
        return to_tensor(array)
    if ctype == CSV:
        return to_tensor(arrays.load_csv(body, limits))
    if ctype == NPY:
        return to_tensor(arrays.load_npy(body, limits))
    if ctype == NPZ:
        return to_tensor(arrays.load_npz(body, limits))
    raise UnsupportedMediaType(f"Content-Type {content_type or '(none)'!r} is not supported; use one of: {', '.join(DECODES)}")


# --- answers --------------------------------------------------------------------


def negotiate(accept: str | None) -> str:
    """The first type of Accept that we produce; missing or */* means JSON."""
    if not accept or not accept.strip():
        return JSON
    for part in accept.split(","):
        kind = media_type(part)
        if kind in ("*/*", "*", "application/*"):
            return JSON
        if kind == "text/*":
            return CSV
        if kind in JSONLINES_ALIASES:
            return JSONLINES
        if kind in ENCODES:
            return kind
    raise NotAcceptable(f"cannot produce {accept!r}; this model answers one of: {', '.join(ENCODES)}")


def to_array(prediction: object) -> np.ndarray | None:
    """Tensors and arrays (and lists of numbers) as an ndarray; None for anything else."""
    if isinstance(prediction, torch.Tensor):
        return prediction.detach().cpu().numpy()
    if isinstance(prediction, np.ndarray):
        return prediction
    if isinstance(prediction, (list, tuple, int, float)):
        try:
            array = np.asarray(prediction)
        except ValueError:
            return None
        return array if array.dtype.kind in "biuf" else None
    return None


def encode_json(prediction: object) -> bytes:
    array = to_array(prediction)
    try:
        return json.dumps(array.tolist() if array is not None else prediction).encode()
    except TypeError as err:
        raise Unprocessable(f"the prediction cannot be written as JSON: {err}") from None


def encode_csv(array: np.ndarray) -> bytes:
    # AWS's encoder writes with np.savetxt: a 1-D array one value per line, 2-D one row per line.
    if array.ndim == 0:
        array = array.reshape(1)
    elif array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
    buffer = io.StringIO()
    np.savetxt(buffer, array, delimiter=",", fmt="%s")
    return buffer.getvalue().encode()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_jsonlines(array: np.ndarray) -> bytes:
    rows = [array.tolist()] if array.ndim == 0 else array.tolist()
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def encode(prediction: object, out_type: str) -> bytes:
    """The prediction as `out_type` (one of ENCODES, from negotiate())."""
    if out_type == JSON:
        return encode_json(prediction)
    array = to_array(prediction)
    if array is None:
        raise NotAcceptable(f"the prediction is a {type(prediction).__name__}, not an array: only {JSON} can carry it")
    if out_type == CSV:
        return encode_csv(array)
    if out_type == NPY:
        return encode_npy(array)
    return encode_jsonlines(array)
