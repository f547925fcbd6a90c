"""Fetch an image for a {"url": ...} request without becoming an SSRF proxy.

Only http/https; every hop (redirects are followed by hand, at most MAX_REDIRECTS) is
resolved first and refused when any address is loopback, private, link-local (this
includes the 169.254.169.254 metadata service), multicast, reserved or unspecified,
unless the host is on the allow-list (SM_VISION_URL_ALLOW: comma-separated host,
host:port or CIDR). Bodies are streamed with a byte cap and a timeout.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests

from serve.errors import BadInput, PayloadTooLarge

MAX_REDIRECTS = 3


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 6 * 1024 * 1024
    timeout_s: float = 5.0
    allow: tuple[str, ...] = ()  # host, host:port or CIDR entries exempt from the address check
    enabled: bool = True

    @classmethod
    def parse_allow(cls, text: str | None) -> tuple[str, ...]:
        return tuple(entry.strip().lower() for entry in (text or "").split(",") if entry.strip())


def _allowed(policy: FetchPolicy, host: str, port: int, addresses: list[str]) -> bool:
    for entry in policy.allow:
        if entry in (host, f"{host}:{port}"):
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if addresses and all(ipaddress.ip_address(a) in network for a in addresses):
            return True
    return False


def _check_target(policy: FetchPolicy, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadInput(f"url scheme {parts.scheme or '(none)'!r} is not allowed: use http or https")
    host = (parts.hostname or "").lower()
    if not host:
        raise BadInput("url has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadInput("url has an invalid port") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise BadInput(f"cannot resolve url host {host!r}") from None
    addresses = sorted({info[4][0].split("%")[0] for info in infos})
    if _allowed(policy, host, port, addresses):
        return
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            raise BadInput(f"url host {host!r} resolves to non-public address {address}; refused (see SM_VISION_URL_ALLOW)")


def fetch_url(url: str, policy: FetchPolicy) -> bytes:
    if not policy.enabled:
        raise BadInput("url inputs are disabled on this endpoint (SM_VISION_URL_FETCH=false)")
    if not isinstance(url, str):
        raise BadInput("'url' must be a string")
    for _ in range(MAX_REDIRECTS + 1):
        _check_target(policy, url)
        try:
            response = requests.get(url, stream=True, allow_redirects=False, timeout=policy.timeout_s)
        except requests.RequestException as err:
            raise BadInput(f"cannot fetch url: {type(err).__name__}") from None
        with response:
            if response.is_redirect:
                url = urljoin(url, response.headers.get("location", ""))
                continue
            if response.status_code != 200:
                raise BadInput(f"url answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise PayloadTooLarge(f"url body is {declared} bytes, above the {policy.max_bytes}-byte cap")
            chunks, total = [], 0
            deadline = time.monotonic() + policy.timeout_s  # a slow drip must not hold a thread
            try:
                for chunk in response.iter_content(64 * 1024):
                    if time.monotonic() > deadline:
                        raise BadInput(f"url body took longer than {policy.timeout_s:g} s")
                    total += len(chunk)
                    if total > policy.max_bytes:
                        raise PayloadTooLarge(f"url body exceeds the {policy.max_bytes}-byte cap")
                    chunks.append(chunk)
            except requests.RequestException as err:
                raise BadInput(f"cannot fetch url: {type(err).__name__}") from None
            return b"".join(chunks)
    raise BadInput(f"url redirected more than {MAX_REDIRECTS} times")
