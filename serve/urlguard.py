"""Fetch a URL a client named, without becoming a proxy into the network we run in.

Standard library only: the server (serve.fetch) and the Lambda bridge (shipped next to
aws/lambda/handler.py in its zip) use this one file, so both refuse the same URLs.

One parse decides everything. `urlsplit` gives the scheme, host, port and path once;
the host is resolved once, every address checked, and the connection goes to the
address that was checked (no second lookup, so DNS rebinding cannot swap it), with the
host name kept for the Host header, TLS SNI and certificate verification. URLs that
parsers read differently are refused outright: backslashes, user info (`user@host`),
whitespace, control and non-ASCII characters (IDN hosts are IDNA-encoded first).
Redirects are followed by hand and every hop is checked the same way. One wall-clock
deadline covers the whole fetch: DNS resolution (run in a small pool of resolver
threads and abandoned at the deadline, since getaddrinfo cannot be interrupted),
connect, TLS, headers, body, all hops. A server dripping a byte a second is cut off
when it runs out. The caller may pass its own deadline (the request's): the fetch
then ends at whichever comes first, so a request's URL items never outlive it.

The allow-list (URLPolicy.exempt: SM_VISION_URL_ALLOW on the server) lets named
destinations skip the public-address check, and every entry carries its ports:
    images.internal           a host name, on ports 80 and 443 only
    images.internal:8080      that host on that port only
    10.0.0.0/8                every address of the network, on ports 80 and 443 only
    10.0.0.0/8:443            ... on port 443 only
    [fd00::/8]:443            IPv6 networks and addresses go in brackets to carry a port
    10.1.2.3:*                every port: only when you mean it
So `10.0.0.0/8` no longer opens port 22 of a whole VPC. A malformed entry is a
ValueError naming it (the server refuses to start).

Refused destinations: anything that is not a global unicast address, i.e. loopback,
private (RFC 1918, unique-local fc00::/7), shared (100.64/10), link-local (incl. the
169.254.169.254 and fd00:ec2::254 metadata services), site-local fec0::/10, multicast,
reserved, unspecified, plus IPv6 forms that tunnel to IPv4 (6to4 2002::/16, Teredo,
IPv4-mapped/compatible, NAT64 to a non-public address).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

SCHEMES = {"http": 80, "https": 443}
REDIRECTS = (301, 302, 303, 307, 308)
_HOST_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
WEB_PORTS = (80, 443)  # what an allow-list entry without a port covers
RESOLVER_THREADS = 8  # concurrent lookups; a stuck one holds its thread until the system resolver gives up
_resolver_pool: ThreadPoolExecutor | None = None
_resolver_lock = threading.Lock()


class FetchError(Exception):
    """Why a URL was not fetched, with the HTTP status a bridge should answer:
    400 malformed URL, 403 refused destination, 413 too large, 502 upstream failure,
    504 deadline passed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class URLPolicy:
    max_bytes: int  # the body cap (the server passes its payload cap)
    timeout_s: float  # wall clock for the whole fetch, all redirect hops included
    exempt: tuple[str, ...] = ()  # allow-list entries (see the module docstring) that skip the public-address check
    hosts: tuple[str, ...] = ()  # when set, the only host names that may be fetched
    max_redirects: int = 3
    max_url_chars: int = 2048
    refusal_hint: str = ""  # appended to "refused" messages, e.g. which setting allows more
    user_agent: str = "sagemaker-vision"


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to `address`, speak to `host`."""

    scheme: str
    host: str
    port: int
    address: str
    path: str  # path and query, as sent on the request line


@dataclass(frozen=True)
class AllowEntry:
    """One allow-list entry: a host name or a network, and the ports it covers."""

    host: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    ports: tuple[int, ...] | None  # None: every port

    def covers(self, host: str, port: int, addresses: list[str]) -> bool:
        if self.ports is not None and port not in self.ports:
            return False
        if self.host is not None:
            return host == self.host
        return all(ipaddress.ip_address(address) in self.network for address in addresses)


def _entry_port(text: str, entry: str) -> tuple[int, ...] | None:
    if text == "*":
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) <= 65535):
        raise ValueError(f"allow-list entry {entry!r}: port {text!r} is not 1-65535 or *")
    return (int(text),)


def allow_entry(entry: str) -> AllowEntry:
    """An allow-list entry parsed (syntax in the module docstring); ValueError naming it."""
    text = entry.strip().lower()
    ports: tuple[int, ...] | None = WEB_PORTS
    if text.startswith("["):  # [v6 address or network] with an optional :port
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"allow-list entry {entry!r}: write IPv6 as [address]:port or [network]:port")
        address, ports = inside, (_entry_port(rest[1:], entry) if rest else WEB_PORTS)
    elif text.count(":") == 1:  # host:port, a.b.c.d:port or a.b.c.d/n:port
        address, _, port_text = text.partition(":")
        ports = _entry_port(port_text, entry)
    else:  # a host name, an IPv4 address or network, or a bare IPv6 one (web ports)
        address = text
    try:
        return AllowEntry(None, ipaddress.ip_network(address, strict=False), ports)
    except ValueError:
        pass
    if ":" in address or "/" in address or not address or not set(address) <= _HOST_CHARS:
        raise ValueError(f"allow-list entry {entry!r} is not a host, host:port, network or network:port")
    return AllowEntry(address.rstrip("."), None, ports)


def parse_entries(text: str | None) -> tuple[str, ...]:
    """A comma-separated allow-list setting as lower-cased entries, each checked by
    allow_entry (ValueError naming a malformed one)."""
    entries = tuple(entry.strip().lower() for entry in (text or "").split(",") if entry.strip())
    for entry in entries:
        allow_entry(entry)
    return entries


def resolve(host: str, port: int) -> list[str]:
    """Every address of host, resolved once (a seam for tests: they must not use DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def _resolver_threads() -> ThreadPoolExecutor:
    global _resolver_pool
    with _resolver_lock:
        if _resolver_pool is None:
            _resolver_pool = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="url-dns")
        return _resolver_pool


def resolve_within(resolver, host: str, port: int, seconds: float) -> list[str]:
    """resolver(host, port), given up after `seconds` (TimeoutError): getaddrinfo
    cannot be interrupted, so it runs on a resolver thread that is left to finish."""
    future = _resolver_threads().submit(resolver, host, port)
    try:
        return future.result(timeout=max(seconds, 0.0))
    except FutureTimeout:
        future.cancel()  # still queued behind stuck lookups: never runs
        raise TimeoutError from None


def address_is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return address_is_public(ip.ipv4_mapped)
        if ip in _NAT64:  # 64:ff9b::a.b.c.d reaches a.b.c.d through a NAT64 gateway
            return address_is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _SIXTOFOUR or ip.teredo is not None or ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_private
    )


def split_url(url: object, policy: URLPolicy) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of url, or FetchError(400). The one parse."""
    if not isinstance(url, str):
        raise FetchError(400, "'url' must be a string")
    if len(url) > policy.max_url_chars:
        raise FetchError(400, f"url is longer than {policy.max_url_chars} characters")
    if "\\" in url:
        raise FetchError(400, "url contains a backslash; parsers disagree on what it means, so it is refused")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise FetchError(400, "url contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError(400, "url is malformed or has an invalid port") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise FetchError(400, f"url scheme {parts.scheme or '(none)'!r} is not allowed: use http or https")
    if "@" in parts.netloc:
        raise FetchError(400, "url contains user info ('@' before the host); credentials in urls are refused")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchError(400, "url has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise FetchError(400, "url host is not a valid international domain name") from None
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise FetchError(400, "url host is not a valid IPv6 address") from None
    elif not set(host) <= _HOST_CHARS:
        raise FetchError(400, "url host has characters a host name cannot have")
    elif len(host) > 253 or not all(0 < len(label) <= 63 for label in host.split(".")):
        raise FetchError(400, "url host has an empty or over-long label")
    if port == 0:
        raise FetchError(400, "url port 0 is not valid")
    path = parts.path or "/"
    if not path.startswith("/"):
        raise FetchError(400, "url path must start with '/'")
    if parts.query:
        path += "?" + parts.query
    if not path.isascii():
        raise FetchError(400, "url path has non-ASCII characters; percent-encode them")
    return scheme, host, port or SCHEMES[scheme], path


def _exempt(policy: URLPolicy, host: str, port: int, addresses: list[str]) -> bool:
    return any(allow_entry(entry).covers(host, port, addresses) for entry in policy.exempt)


def check_url(url: object, policy: URLPolicy, resolver=None, deadline: _Deadline | None = None) -> Target:
    """The checked Target for url, or FetchError (400 malformed, 403 refused, 504 the
    host did not resolve before the deadline: policy.timeout_s unless one is given)."""
    scheme, host, port, path = split_url(url, policy)
    if policy.hosts and host not in policy.hosts:
        raise FetchError(403, f"url host {host!r} is not on the allow-list{policy.refusal_hint}")
    deadline = deadline or _Deadline(policy.timeout_s)
    try:
        answers = resolve_within(resolver or resolve, host, port, deadline.remaining())
        addresses = sorted({a.split("%")[0] for a in answers})
    except TimeoutError:
        raise deadline.error() from None
    except (OSError, UnicodeError):
        raise FetchError(400, f"cannot resolve url host {host!r}") from None
    if not addresses:
        raise FetchError(400, f"url host {host!r} has no addresses")
    if not _exempt(policy, host, port, addresses):
        for address in addresses:
            if not address_is_public(ipaddress.ip_address(address)):
                raise FetchError(403, f"url host {host!r} resolves to non-public address {address}; refused{policy.refusal_hint}")
    # IPv4 first: networks (a Lambda in a VPC, many clusters) often have no IPv6 route.
    address = next((a for a in addresses if ":" not in a), addresses[0])
    return Target(scheme, host, port, address, path)


class _Deadline:
    """The fetch's own limit (seconds from now), or the caller's deadline (a
    time.monotonic() value) when that comes first."""

    def __init__(self, seconds: float, caller_deadline: float | None = None):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.caller_first = caller_deadline is not None and caller_deadline < self.end
        if self.caller_first:
            self.end = caller_deadline

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.error()
        return left

    def error(self) -> FetchError:
        if self.caller_first:
            return FetchError(504, "the request's deadline passed while fetching the url")
        return FetchError(504, f"fetching the url took longer than {self.seconds:g} s")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the checked address; Host still names the host."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = target.address

    def connect(self):
        self.sock = self.pinned = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, with SNI and the certificate checked for the host name."""

    def __init__(self, target: Target, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self.address = target.address

    def connect(self):
        self.pinned = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.pinned = self._context.wrap_socket(self.pinned, server_hostname=self.host)


def _abort(connection: http.client.HTTPConnection, fired: threading.Event) -> None:
    """The deadline passed: wake whatever read is blocked on the socket."""
    fired.set()
    # Not connection.sock: http.client drops that once a response says "close", while
    # the response still reads from the socket.
    sock = getattr(connection, "pinned", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


def _get(target: Target, deadline: _Deadline, policy: URLPolicy) -> tuple[int, str | None, bytes]:
    """One hop: (status, Location, body). The socket timeout bounds each step and a
    watchdog the whole hop, since a drip of bytes restarts per-read timeouts."""
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = cls(target, timeout=deadline.remaining())
    fired = threading.Event()
    watchdog = threading.Timer(deadline.remaining(), _abort, (connection, fired))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request("GET", target.path, headers={"User-Agent": policy.user_agent, "Accept": "image/*, application/octet-stream"})
        reply = connection.getresponse()
        if reply.status in REDIRECTS:
            return reply.status, reply.getheader("Location"), b""
        if reply.status != 200:
            return reply.status, None, b""
        # reply.length is http.client's parse of Content-Length (None when it is not a
        # number); the header text itself ("²", 5,000 digits) is never converted here.
        if reply.length is not None and reply.length > policy.max_bytes:
            raise FetchError(413, f"url body is {reply.length} bytes, above the {policy.max_bytes}-byte cap")
        chunks, total = [], 0
        while chunk := reply.read(64 * 1024):
            total += len(chunk)
            if total > policy.max_bytes:
                raise FetchError(413, f"url body exceeds the {policy.max_bytes}-byte cap")
            chunks.append(chunk)
        if fired.is_set():  # the shutdown looks like an early end of the body
            raise deadline.error()
        return 200, None, b"".join(chunks)
    except FetchError:
        raise
    except (OSError, http.client.HTTPException, ssl.SSLError) as err:
        if fired.is_set() or isinstance(err, TimeoutError):
            raise deadline.error() from None
        raise FetchError(502, f"cannot fetch url: {type(err).__name__}") from None
    finally:
        watchdog.cancel()
        connection.close()


def fetch(url: object, policy: URLPolicy, resolver=None, deadline: float | None = None) -> bytes:
    """The body of url (HTTP 200 only), every hop checked, or FetchError. `deadline`
    (a time.monotonic() value, e.g. the request's) ends the fetch if it comes before
    policy.timeout_s does."""
    limit = _Deadline(policy.timeout_s, deadline)
    limit.remaining()  # nothing left of the caller's deadline: not even a lookup
    for _ in range(policy.max_redirects + 1):
        target = check_url(url, policy, resolver, limit)
        status, location, body = _get(target, limit, policy)
        if status == 200:
            return body
        if status not in REDIRECTS:
            raise FetchError(502, f"url answered HTTP {status}")
        if not location:
            raise FetchError(502, f"url redirected ({status}) without a Location")
        try:
            url = urljoin(url, location)
        except ValueError:
            raise FetchError(502, "url redirected to a malformed Location") from None
    raise FetchError(502, f"url redirected more than {policy.max_redirects} times")
