"""The server's {"url": ...} fetch (serve.fetch over serve.urlguard) under attack.

Traffic goes only to loopback servers started here; names resolve through a fake
getaddrinfo (never DNS). A "secret" server stands for the metadata service: a test
fails if it is ever reached.
"""

from __future__ import annotations

import socket
import time

import pytest

from container import ServeConfig
from serve import errors, urlguard
from serve.fetch import FetchPolicy, fetch_url
from tests.support.net import Site, drip, redirect
from tests.support.net import respond as body
from tests.support.payloads import png_bytes
from tests.support.serving import fetch_policy

PNG = png_bytes(size=(8, 8), colour=(255, 0, 0))


@pytest.fixture
def sites():
    started = []

    def start(host="127.0.0.1", port=0):
        site = Site(host, port)
        started.append(site)
        return site

    yield start
    for site in started:
        site.close()


class FakeDNS(dict):
    """name -> answers, one per lookup (the last one repeats)."""

    def __init__(self):
        super().__init__()
        self.lookups: list[str] = []


@pytest.fixture
def dns(monkeypatch):
    """Names resolve from the table; anything else must be an IP literal. Patches
    socket.getaddrinfo itself, so any HTTP client sees the same answers."""
    table = FakeDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        host = host.decode() if isinstance(host, bytes) else host
        if host in table:
            table.lookups.append(host)
            answers = table[host]
            address = answers.pop(0) if len(answers) > 1 else answers[0]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]
        return real(host, port, *args, flags=socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture
def no_connections(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    try:  # the HTTP client the server used before the shared guard
        import urllib3.util.connection

        monkeypatch.setattr(urllib3.util.connection, "create_connection", refuse)
    except ImportError:
        pass


def test_backslash_userinfo_trick_never_reaches_the_secret(sites, dns):
    """`http://SECRET\\@allowed/../x`: a guard reading the host as `allowed` while the
    client connects to SECRET is the SSRF the shared guard closes."""
    secret = sites()
    secret.routes["*"] = body(PNG)
    dns["images.example.test"] = ["93.184.216.34"]
    policy = fetch_policy(allow=("images.example.test",), timeout_s=2)
    with pytest.raises(errors.BadInput, match="backslash"):
        fetch_url(f"http://127.0.0.1:{secret.port}\\@images.example.test/../img.png", policy)
    assert secret.hits == []


def test_backslash_in_a_redirect_is_refused(sites, dns):
    secret, public = sites(), sites()
    secret.routes["*"] = body(PNG)
    public.routes["/r"] = redirect(f"http://127.0.0.1:{secret.port}\\@images.example.test/../img.png")
    dns["images.example.test"] = ["93.184.216.34"]
    policy = fetch_policy(allow=(f"127.0.0.1:{public.port}", "images.example.test"), timeout_s=2)
    with pytest.raises(errors.BadInput, match="backslash"):
        fetch_url(f"http://127.0.0.1:{public.port}/r", policy)
    assert public.hits == ["/r"] and secret.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://images.example.test@127.0.0.1/",
        "http://user:pw@images.example.test/",
        "http://@images.example.test/",
        "http://images.example.test/a b",
        "http://images.example.test/\t",
        "http://exa%6dple.test/",
        "http://images.example.test/\u00e9",
        "http://a..b/",
        "http://images.example.test:0/",
    ],
)
def test_ambiguous_urls_are_refused_before_any_connection(dns, no_connections, url):
    dns["images.example.test"] = ["93.184.216.34"]
    with pytest.raises(errors.BadInput):
        fetch_url(url, fetch_policy(allow=("images.example.test",), timeout_s=1))


@pytest.mark.parametrize(
    "address",
    [
        "fec0::1",  # site-local (deprecated, still routable inside some networks)
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:5db8:d822::1",  # 6to4 of a public address: refused as a class
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "::ffff:169.254.169.254",
        "fd00:ec2::254",
        "100.64.0.1",
        "169.254.170.2",
    ],
)
def test_non_global_addresses_are_refused(dns, no_connections, address):
    dns["images.example.test"] = [address]
    with pytest.raises(errors.BadInput, match="non-public"):
        fetch_url("http://images.example.test/a.png", fetch_policy(timeout_s=1))


def test_dns_rebinding_connects_to_the_checked_address(sites, dns):
    """The resolver answers 127.0.0.1 (allowed here) first and 127.0.0.2 (not) after:
    the fetch must use the first answer, not resolve again."""
    public = sites("127.0.0.1")
    try:
        secret = sites("127.0.0.2", public.port)
    except OSError:
        pytest.fail("cannot bind 127.0.0.2 on the same port")
    public.routes["*"] = body(b"public")
    secret.routes["*"] = body(b"secret")
    dns["rebind.example.test"] = ["127.0.0.1", "127.0.0.2"]
    assert fetch_url(f"http://rebind.example.test:{public.port}/x", fetch_policy(allow=("127.0.0.1/32:*",), timeout_s=2)) == b"public"
    assert secret.hits == [] and dns.lookups == ["rebind.example.test"]


def _drip_headers(h):
    h.wfile.write(b"HTTP/1.0 200 OK\r\n")
    for _ in range(200):
        try:
            h.wfile.write(b"X-Slow: 1\r\n")
            h.wfile.flush()
        except OSError:
            return
        time.sleep(0.1)


@pytest.mark.parametrize("route", [_drip_headers, drip(200)], ids=["headers", "body"])
def test_one_deadline_for_the_whole_fetch(sites, route):
    site = sites()
    site.routes["/slow"] = route
    start = time.monotonic()
    with pytest.raises(errors.BadInput, match="longer than 1 s"):
        fetch_url(f"http://127.0.0.1:{site.port}/slow", fetch_policy(allow=(f"127.0.0.1:{site.port}",), timeout_s=1))
    assert time.monotonic() - start < 2.5


def test_deadline_spans_redirect_hops(sites):
    site = sites()

    def slow_redirect(h):
        time.sleep(0.4)
        redirect("/again")(h)

    site.routes["/again"] = slow_redirect
    start = time.monotonic()
    with pytest.raises(errors.BadInput):
        fetch_url(f"http://127.0.0.1:{site.port}/again", fetch_policy(allow=(f"127.0.0.1:{site.port}",), timeout_s=1))
    assert time.monotonic() - start < 2


def test_host_header_and_path_come_from_the_one_parse(sites, dns):
    site = sites()
    seen = []

    def record(h):
        seen.append((h.headers["Host"], h.path))
        body(PNG)(h)

    site.routes["*"] = record
    dns["images.example.test"] = ["127.0.0.1"]
    url = f"http://images.example.test:{site.port}/a/../b.png?x=1#frag"
    assert fetch_url(url, fetch_policy(allow=(f"127.0.0.1/32:{site.port}",), timeout_s=2)) == PNG
    assert seen == [(f"images.example.test:{site.port}", "/a/../b.png?x=1")]


def test_guard_is_the_same_module_the_lambda_ships():
    # One implementation: serve.fetch delegates to serve.urlguard, which is stdlib only.
    assert fetch_url.__module__ == "serve.fetch" and urlguard.fetch.__module__ == "serve.urlguard"
    assert fetch_policy(allow=("a",)).guard().exempt == ("a",)
    assert FetchPolicy.from_config(ServeConfig(max_payload_mb=2, url_timeout_s=3)).guard().max_bytes == 2 << 20
