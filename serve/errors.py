"""Typed request errors, each knowing its HTTP status, and `reply`: the one mapping of
any error to the answer a client gets (the server's routes and the MMS backend both
answer through it)."""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException

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


class RequestTimeout(ServeError):
    status = 408  # the body arrived too slowly (SM_VISION_BODY_TIMEOUT_S): answered, and the connection closed
    headers = {"Connection": "close"}


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


def reply(err: Exception) -> tuple[int, dict, dict[str, str]]:
    """(status, JSON body, extra headers) answering `err`: a typed error's own status and
    message; starlette's routing errors (unknown route 404, wrong method 405) in the same
    {"error": ...} shape; anything else 500 naming the exception without paths (its
    traceback belongs in the log, which the caller writes)."""
    if isinstance(err, ServeError):
        return err.status, {"error": err.message}, err.headers
    if isinstance(err, HTTPException):
        return err.status_code, {"error": err.detail}, {}
    return 500, {"error": f"internal error: {type(err).__name__}: {redact_paths(str(err))}"}, {}
