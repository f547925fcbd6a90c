"""serve.urlguard after issue 22: allow-list entries carry ports, DNS resolution runs
inside the fetch's deadline, a caller's (the request's) deadline ends the fetch, and an
upstream Content-Length that is not a number is never converted (no 500)."""

from __future__ import annotations

import threading
import time

import pytest

from serve import errors, urlguard
from serve.fetch import fetch_url
from tests.support.net import Site, respond
from tests.support.serving import fetch_policy


@pytest.mark.parametrize(
    "entry, host, port, addresses, covered",
    [
        ("10.0.0.0/8", "10.1.2.3", 80, ["10.1.2.3"], True),
        ("10.0.0.0/8", "10.1.2.3", 443, ["10.1.2.3"], True),
        ("10.0.0.0/8", "10.1.2.3", 22, ["10.1.2.3"], False),  # the issue: no longer every port of the VPC
        ("10.0.0.0/8:443", "10.1.2.3", 443, ["10.1.2.3"], True),
        ("10.0.0.0/8:443", "10.1.2.3", 80, ["10.1.2.3"], False),
        ("10.0.0.0/8:*", "10.1.2.3", 22, ["10.1.2.3"], True),
        ("10.0.0.0/8", "store.internal", 443, ["10.1.2.3", "192.168.0.1"], False),  # every address must be inside
        ("images.internal", "images.internal", 443, ["10.9.9.9"], True),
        ("images.internal", "images.internal", 8080, ["10.9.9.9"], False),
        ("IMAGES.internal:8080", "images.internal", 8080, ["10.9.9.9"], True),
        ("images.internal:8080", "other.internal", 8080, ["10.9.9.9"], False),
        ("[fd00::/8]:443", "v6.internal", 443, ["fd00::1"], True),
        ("[fd00::/8]:443", "v6.internal", 80, ["fd00::1"], False),
        ("fd00::/8", "v6.internal", 80, ["fd00::1"], True),
        ("[fd00::1]", "v6.internal", 443, ["fd00::1"], True),
    ],
)
def test_allow_list_entries_carry_their_ports(entry, host, port, addresses, covered):
    assert urlguard.allow_entry(entry).covers(host, port, addresses) is covered


@pytest.mark.parametrize(
    "entry", ["10.0.0.0/8:22x", "host:0", "host:70000", "host:", "[fd00::1", "[fd00::1]443", "a/b", "ho st", "10.0.0.0/33"]
)
def test_malformed_entries_are_refused_naming_them(entry):
    with pytest.raises(ValueError, match="allow-list entry"):
        urlguard.parse_entries(f"ok.internal, {entry}")


def test_parse_entries_keeps_the_text():
    assert urlguard.parse_entries(" A.internal:8080 , 10.0.0.0/8 ,") == ("a.internal:8080", "10.0.0.0/8")


def test_a_network_entry_without_a_port_does_not_open_other_ports():
    with Site(routes={"*": respond(b"secret")}) as site:
        with pytest.raises(errors.BadInput, match="non-public"):
            fetch_url(f"http://127.0.0.1:{site.port}/", fetch_policy(allow=("127.0.0.0/8",), timeout_s=2))
        assert fetch_url(f"http://127.0.0.1:{site.port}/", fetch_policy(allow=(f"127.0.0.0/8:{site.port}",), timeout_s=2)) == b"secret"
        assert site.hits == ["/"]


def test_dns_resolution_is_inside_the_deadline():
    """A resolver that hangs (getaddrinfo cannot be interrupted) costs the fetch its
    deadline, not the resolver's own timeout."""
    release = threading.Event()

    def hanging(host, port):
        release.wait(30)
        return ["93.184.216.34"]

    start = time.monotonic()
    try:
        with pytest.raises(urlguard.FetchError) as err:
            urlguard.fetch("http://slow-dns.example.test/a.png", fetch_policy(timeout_s=0.5).guard(), resolver=hanging)
    finally:
        release.set()
    assert err.value.status == 504 and time.monotonic() - start < 1.5


def test_the_callers_deadline_ends_the_fetch_first():
    def slow(handler):
        time.sleep(3)
        respond(b"late")(handler)

    with Site(routes={"*": slow}) as site:
        policy = fetch_policy(allow=(f"127.0.0.1:{site.port}",), timeout_s=30)
        start = time.monotonic()
        # The request's own deadline: a 504 (the url's own timeout is the client's url's fault: a 400).
        with pytest.raises(errors.Timeout, match="request's deadline passed"):
            fetch_url(f"http://127.0.0.1:{site.port}/", policy, deadline=time.monotonic() + 0.5)
        assert time.monotonic() - start < 1.5
        with pytest.raises(errors.Timeout, match="request's deadline passed"):
            fetch_url(f"http://127.0.0.1:{site.port}/", policy, deadline=time.monotonic() - 1)  # nothing left: no lookup
        assert site.hits == ["/"]


def test_an_own_timeout_shorter_than_the_callers_deadline_still_applies():
    def slow(handler):
        time.sleep(3)

    with Site(routes={"*": slow}) as site, pytest.raises(errors.BadInput, match="longer than 0.5 s"):
        fetch_url(
            f"http://127.0.0.1:{site.port}/",
            fetch_policy(allow=(f"127.0.0.1:{site.port}",), timeout_s=0.5),
            deadline=time.monotonic() + 30,
        )


@pytest.mark.parametrize("declared", ["²", "9" * 5_000, "-1", "1_0"])
def test_an_odd_upstream_content_length_is_not_a_500(declared):
    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", declared)
        handler.end_headers()
        handler.wfile.write(b"ok")

    with Site(routes={"*": route}) as site:
        policy = fetch_policy(allow=(f"127.0.0.1:{site.port}",), timeout_s=2, max_bytes=1)
        with pytest.raises((errors.BadInput, errors.PayloadTooLarge)):
            fetch_url(f"http://127.0.0.1:{site.port}/", policy)


def test_a_declared_content_length_over_the_cap_is_413_before_reading():
    with Site(routes={"*": respond(b"x" * 100)}) as site, pytest.raises(errors.PayloadTooLarge, match="100 bytes"):
        fetch_url(f"http://127.0.0.1:{site.port}/", fetch_policy(allow=(f"127.0.0.1:{site.port}",), timeout_s=2, max_bytes=10))
