"""Typed request errors: each knows its HTTP status; serve.app maps them in one place."""

from __future__ import annotations

import re

# An absolute path's directories (not a URL's: those follow ':' or '/').
_DIRECTORIES = re.compile(r"(?<![\w:/.])(?:/[^\s/'\"]+)+/(?=[^\s/'\"])")


def redact_paths(message: str) -> str:
    """A message fit for a response body: absolute paths shortened to their file name
    (/opt/ml/model/model.pt -> model.pt). The full text goes to the log only."""
    return _DIRECTORIES.sub("", message)


class ServeError(Exception):
    """A problem with the request (or the endpoint's state) the client can act on."""

    status = 500
    headers: dict[str, str] = {}  # extra response headers (Retry-After)

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(ServeError):
    status = 400  # unreadable image, broken JSON/base64, refused URL


class NotFound(ServeError):
    status = 404  # unknown model (multi-model endpoint)


class NotAcceptable(ServeError):
    status = 406  # Accept asks for something we cannot produce


class Conflict(ServeError):
    status = 409  # model already loaded


class PayloadTooLarge(ServeError):
    status = 413  # body over the cap, or an image with too many pixels


class UnsupportedMediaType(ServeError):
    status = 415  # Content-Type we do not decode


class Unprocessable(ServeError):
    status = 422  # well-formed but unusable (wrong array shape, empty batch)


class NotReady(ServeError):
    status = 503  # model still loading, or failed to load


class Overloaded(ServeError):
    status = 503  # too many requests in progress: come back shortly
    headers = {"Retry-After": "1"}


class Timeout(ServeError):
    status = 504  # inference exceeded SAGEMAKER_MODEL_SERVER_TIMEOUT


class InsufficientMemory(ServeError):
    status = 507  # a multi-model endpoint cannot fit the model
