"""Lambda bridge: an image reference in, the endpoint's prediction out.

Deployed alone (`smvision-aws lambda-package` zips this file); needs only boto3, which
the Lambda Python runtime provides. Handler: `handler.lambda_handler`.

Accepted events (API Gateway REST/HTTP proxy events, or a direct invoke):
  {"url": "https://..."}               the Lambda fetches it (guarded, see below)
  {"s3_uri": "s3://bucket/key"}         read from S3 (only under ALLOWED_S3_PREFIX)
  {"image": "<base64>"}                 the image itself
  API Gateway body: any of the JSON objects above, a raw image (base64-encoded body,
  Content-Type image/jpeg or image/png), or a bare URL with Content-Type
  string/url or text/plain.
The image is sent to the endpoint as image/jpeg or image/png (from its magic bytes),
with Accept: application/json; the endpoint's JSON comes back as the body.

Every answer is API-Gateway shaped ({"statusCode", "headers", "body"}): 400 bad input,
403 a refused destination, 404 missing S3 object, 413 too large, 415 not a JPEG/PNG,
502 endpoint or upstream error, 504 timeout. Bodies are {"error": message}, never a
traceback.

URL guard: http/https only, no credentials in the URL, every address the host resolves
to must be public (no loopback, private, link-local incl. 169.254.169.254 metadata,
unique-local incl. fd00:ec2::254, multicast, reserved, unspecified); the connection
goes to the address that was checked (no DNS rebinding), redirects are re-checked hop
by hop, bodies are capped at MAX_IMAGE_BYTES and every step has a timeout.

Environment: ENDPOINT_NAME (required), ALLOWED_S3_PREFIX (s3://bucket/prefix/; empty:
S3 inputs refused), MAX_IMAGE_BYTES (default 5 MiB; the endpoint takes at most 6 MB),
FETCH_TIMEOUT_S (default 5), ALLOWED_URL_HOSTS (optional comma-separated allow-list of
host names; empty: any public host), ASYNC_INFERENCE (true for an endpoint deployed with
`deploy --async`: {"s3_uri": ...} events are queued with InvokeEndpointAsync and the
answer is 202 {"inference_id", "output_location", "failure_location"}).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import json
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 3
logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A problem with the request or its target, mapped to one status code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Config:
    endpoint_name: str
    allowed_s3_prefix: str = ""
    max_image_bytes: int = 5 * 1024 * 1024
    fetch_timeout_s: float = 5.0
    allowed_url_hosts: tuple[str, ...] = ()
    async_inference: bool = False  # ASYNC_INFERENCE=true: the endpoint was deployed with --async

    @classmethod
    def from_env(cls, environ=None) -> Config:
        environ = os.environ if environ is None else environ
        endpoint = environ.get("ENDPOINT_NAME", "").strip()
        if not endpoint:
            raise RuntimeError("ENDPOINT_NAME is not set on this function")
        hosts = tuple(h.strip().lower() for h in environ.get("ALLOWED_URL_HOSTS", "").split(",") if h.strip())
        return cls(
            endpoint_name=endpoint,
            allowed_s3_prefix=environ.get("ALLOWED_S3_PREFIX", "").strip(),
            max_image_bytes=int(environ.get("MAX_IMAGE_BYTES", 5 * 1024 * 1024)),
            fetch_timeout_s=float(environ.get("FETCH_TIMEOUT_S", 5)),
            allowed_url_hosts=hosts,
            async_inference=environ.get("ASYNC_INFERENCE", "").strip().lower() in ("1", "true", "yes", "on"),
        )


# --- responses ---------------------------------------------------------------------


def response(status: int, body) -> dict:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": body if isinstance(body, str) else json.dumps(body),
        "isBase64Encoded": False,
    }


# --- decoding the event --------------------------------------------------------------


def _header(headers: dict | None, name: str) -> str:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return (value or "").split(";")[0].strip().lower()
    return ""


def parse_event(event) -> tuple[str, object]:
    """('url'|'s3'|'bytes', value) from any accepted event shape."""
    if not isinstance(event, dict):
        raise RequestError(400, "event must be a JSON object")
    is_proxy = "body" in event and ("httpMethod" in event or "requestContext" in event or "headers" in event)
    if not is_proxy:
        return _parse_payload(event)
    body = event.get("body")
    if body is None or body == "":
        raise RequestError(400, 'empty request body: send {"url": ...}, {"s3_uri": ...}, {"image": base64} or an image/jpeg|png body')
    content_type = _header(event.get("headers"), "content-type")
    raw: bytes | str = body
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "body is marked base64 but does not decode") from None
    if content_type.startswith("image/") or (isinstance(raw, bytes) and sniff_image(raw)):
        return "bytes", raw if isinstance(raw, bytes) else raw.encode("latin-1")
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if content_type in ("string/url", "text/plain", "text/uri-list"):
        return "url", text.strip()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        raise RequestError(400, "body is not JSON; send application/json, an image, or a URL with Content-Type string/url") from None
    return _parse_payload(payload)


def _parse_payload(payload) -> tuple[str, object]:
    if not isinstance(payload, dict):
        raise RequestError(400, "expected a JSON object with 'url', 's3_uri' or 'image'")
    given = [key for key in ("url", "s3_uri", "image") if payload.get(key)]
    if len(given) != 1:
        raise RequestError(400, "give exactly one of 'url', 's3_uri' or 'image' (base64)")
    key = given[0]
    value = payload[key]
    if not isinstance(value, str):
        raise RequestError(400, f"'{key}' must be a string")
    if key == "url":
        return "url", value.strip()
    if key == "s3_uri":
        return "s3", value.strip()
    try:
        return "bytes", base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "'image' is not valid base64") from None


def sniff_image(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return None


# --- the URL guard -------------------------------------------------------------------


def resolve(host: str, port: int) -> list[str]:
    """All addresses of host (a seam for tests: they must not query real DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0].split("%")[0] for info in infos})


def address_allowed(ip) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
        elif ip.teredo:
            ip = ip.teredo[1]
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_private
    )


def check_url(url: str, config: Config) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, address to connect to, path+query) or RequestError."""
    if len(url) > 2048:
        raise RequestError(400, "url is longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RequestError(400, "url is malformed or has an invalid port") from None
    if parts.scheme not in ("http", "https"):
        raise RequestError(400, f"url scheme {parts.scheme or '(none)'!r} is not allowed: use http or https")
    if parts.username is not None or parts.password is not None:
        raise RequestError(400, "credentials in the url are not allowed")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise RequestError(400, "url has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    if config.allowed_url_hosts and host not in config.allowed_url_hosts:
        raise RequestError(403, f"host {host!r} is not in ALLOWED_URL_HOSTS")
    try:
        addresses = resolve(host, port)
    except (socket.gaierror, UnicodeError, OSError):
        raise RequestError(400, f"cannot resolve url host {host!r}") from None
    if not addresses:
        raise RequestError(400, f"url host {host!r} has no addresses")
    for address in addresses:
        if not address_allowed(ipaddress.ip_address(address)):
            raise RequestError(403, f"url host {host!r} resolves to non-public address {address}; refused")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    # IPv4 first: Lambda functions in a VPC often have no IPv6 route.
    address = next((a for a in addresses if ":" not in a), addresses[0])
    return parts.scheme, host, port, address, path


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, with SNI and certificate check for the host name."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_url(url: str, config: Config) -> bytes:
    deadline = time.monotonic() + config.fetch_timeout_s
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, address, path = check_url(url, config)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestError(504, "fetching the url timed out")
        cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        connection = cls(host, port, address, timeout=remaining)
        try:
            connection.request("GET", path, headers={"User-Agent": "smvision-lambda-bridge", "Accept": "image/jpeg, image/png"})
            reply = connection.getresponse()
            if reply.status in (301, 302, 303, 307, 308):
                location = reply.getheader("Location")
                if not location:
                    raise RequestError(502, f"url redirected ({reply.status}) without a Location")
                url = urljoin(url, location)
                continue
            if reply.status != 200:
                raise RequestError(502, f"url answered HTTP {reply.status}")
            length = reply.getheader("Content-Length")
            if length and length.isdigit() and int(length) > config.max_image_bytes:
                raise RequestError(413, f"image is {length} bytes; the limit is {config.max_image_bytes}")
            data = b""
            while len(data) <= config.max_image_bytes:
                if time.monotonic() > deadline:
                    raise RequestError(504, "fetching the url timed out")
                chunk = reply.read(64 * 1024)
                if not chunk:
                    return data
                data += chunk
            raise RequestError(413, f"image is larger than the limit of {config.max_image_bytes} bytes")
        except TimeoutError:
            raise RequestError(504, "fetching the url timed out") from None
        except (OSError, http.client.HTTPException) as err:
            raise RequestError(502, f"fetching the url failed: {type(err).__name__}") from None
        finally:
            connection.close()
    raise RequestError(502, f"url redirected more than {MAX_REDIRECTS} times")


# --- S3 ---------------------------------------------------------------------------------


def _split_s3(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
        raise RequestError(400, f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, parts.path.lstrip("/")


def allowed_s3_object(uri: str, config: Config) -> tuple[str, str]:
    """(bucket, key) of an S3 input under ALLOWED_S3_PREFIX; 403 otherwise."""
    bucket, key = _split_s3(uri)
    if not config.allowed_s3_prefix:
        raise RequestError(403, "S3 inputs are disabled (ALLOWED_S3_PREFIX is not set)")
    allowed_bucket, allowed_prefix = _split_s3(config.allowed_s3_prefix.rstrip("/") + "/x")
    allowed_prefix = allowed_prefix[:-1]  # drop the 'x': keeps the trailing '/'
    if bucket != allowed_bucket or not key.startswith(allowed_prefix) or ".." in key.split("/"):
        raise RequestError(403, f"s3://{bucket}/{key} is outside {config.allowed_s3_prefix}")
    return bucket, key


def read_s3(uri: str, config: Config, s3_client) -> bytes:
    bucket, key = allowed_s3_object(uri, config)
    from botocore.exceptions import ClientError

    try:
        head = s3_client.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] > config.max_image_bytes:
            raise RequestError(413, f"image is {head['ContentLength']} bytes; the limit is {config.max_image_bytes}")
        return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read(config.max_image_bytes + 1)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise RequestError(404, f"s3://{bucket}/{key} does not exist") from None
        if code in ("403", "AccessDenied"):
            raise RequestError(403, f"access to s3://{bucket}/{key} is denied") from None
        raise RequestError(502, f"reading s3://{bucket}/{key} failed: {code}") from None


# --- the endpoint -------------------------------------------------------------------


def invoke(image: bytes, config: Config, runtime_client) -> dict:
    from botocore.exceptions import ClientError, ReadTimeoutError

    if len(image) > config.max_image_bytes:
        raise RequestError(413, f"image is {len(image)} bytes; the limit is {config.max_image_bytes}")
    content_type = sniff_image(image)
    if content_type is None:
        raise RequestError(415, "the data is not a JPEG or PNG image")
    try:
        reply = runtime_client.invoke_endpoint(
            EndpointName=config.endpoint_name,
            ContentType=content_type,
            Accept="application/json",
            Body=image,
        )
    except ReadTimeoutError:
        raise RequestError(504, "the endpoint did not answer in time") from None
    except ClientError as err:
        error = err.response.get("Error", {})
        if error.get("Code") == "ThrottlingException":
            raise RequestError(429, "the endpoint is throttling; retry later") from None
        # ModelError carries the container's own (already client-safe) message.
        raise RequestError(502, f"endpoint error {error.get('Code')}: {error.get('Message', '')[:300]}") from None
    body = reply["Body"].read()
    try:
        return json.loads(body)
    except ValueError:
        raise RequestError(502, "the endpoint did not answer JSON") from None


ASYNC_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def submit_async(kind: str, value, config: Config, runtime_client) -> dict:
    """An async endpoint reads its input from S3 itself: queue the object (checked
    against ALLOWED_S3_PREFIX, never downloaded here) and answer where the result will
    appear."""
    from botocore.exceptions import ClientError

    if kind != "s3":
        raise RequestError(400, 'this endpoint is asynchronous: send {"s3_uri": "s3://bucket/key.jpg"}')
    bucket, key = allowed_s3_object(value, config)
    content_type = ASYNC_CONTENT_TYPES.get(os.path.splitext(key)[1].lower())
    if content_type is None:
        raise RequestError(415, "async inputs are .jpg, .jpeg or .png objects")
    try:
        reply = runtime_client.invoke_endpoint_async(
            EndpointName=config.endpoint_name,
            InputLocation=f"s3://{bucket}/{key}",
            ContentType=content_type,
            Accept="application/json",
        )
    except ClientError as err:
        error = err.response.get("Error", {})
        if error.get("Code") == "ThrottlingException":
            raise RequestError(429, "the endpoint is throttling; retry later") from None
        raise RequestError(502, f"endpoint error {error.get('Code')}: {error.get('Message', '')[:300]}") from None
    return {
        "inference_id": reply.get("InferenceId"),
        "output_location": reply["OutputLocation"],
        "failure_location": reply.get("FailureLocation"),
    }


def handle(event, config: Config, runtime_client, s3_client) -> dict:
    try:
        kind, value = parse_event(event)
        if config.async_inference:
            return response(202, submit_async(kind, value, config, runtime_client))
        if kind == "url":
            image = fetch_url(value, config)
        elif kind == "s3":
            image = read_s3(value, config, s3_client)
        else:
            image = value
        return response(200, invoke(image, config, runtime_client))
    except RequestError as err:
        return response(err.status, {"error": err.message})
    except Exception:  # noqa: BLE001 - the client gets a status, the log the traceback
        logger.exception("unexpected failure")
        return response(500, {"error": "internal error in the bridge; see its CloudWatch log"})


_CLIENTS: dict = {}


def _clients():
    """Created on the first call and reused while the execution environment lives."""
    if not _CLIENTS:
        import boto3
        from botocore.config import Config as BotoConfig

        timeouts = BotoConfig(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2})
        _CLIENTS["runtime"] = boto3.client("sagemaker-runtime", config=timeouts)
        _CLIENTS["s3"] = boto3.client("s3", config=timeouts)
    return _CLIENTS["runtime"], _CLIENTS["s3"]


def lambda_handler(event, context):
    config = Config.from_env()
    runtime_client, s3_client = _clients()
    return handle(event, config, runtime_client, s3_client)
