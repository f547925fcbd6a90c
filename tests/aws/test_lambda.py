"""The Lambda bridge: every event shape, every refused URL, S3 and endpoint errors.

boto3 clients are stubbed; URL fetches go only to a loopback server started here, and
host names are resolved by a fake resolver (never DNS). The loopback address itself
is refused by the real guard, so the tests that fetch from it allow 127.0.0.1 and
nothing else explicitly.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import socket
import sys
import time

import pytest
from botocore.response import StreamingBody

from tests.support.aws import LAMBDA_ENDPOINT, REPO
from tests.support.net import Site, drip, redirect, respond
from tests.support.payloads import image_bytes
from train.synthetic import make_image

PREDICTION = {"predicted_label": "red_circle", "confidence": 0.97, "probabilities": {}, "top_k": []}
PNG = image_bytes(make_image("red_circle"), "PNG")
JPEG = image_bytes(make_image("red_circle"), "JPEG")


def expect_invoke(stub, body: bytes, content_type: str, reply=None):
    payload = json.dumps(reply or PREDICTION).encode()
    stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"},
        {"EndpointName": LAMBDA_ENDPOINT, "ContentType": content_type, "Accept": "application/json", "Body": body},
    )


# --- a loopback image server -------------------------------------------------------


@pytest.fixture
def site():
    with Site() as server:
        yield server


@pytest.fixture
def allow_loopback(bridge, monkeypatch):
    """Allow exactly 127.0.0.1 in addition to what the real guard allows."""
    real = bridge.urlguard.address_is_public
    monkeypatch.setattr(bridge.urlguard, "address_is_public", lambda ip: ip == ipaddress.ip_address("127.0.0.1") or real(ip))


@pytest.fixture
def fake_dns(bridge, monkeypatch):
    """Names resolve from this table; IP literals (incl. odd numeric forms) numerically only."""
    table: dict[str, list[str]] = {}

    def resolve(host, port):
        if host in table:
            return table[host]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return sorted({info[4][0] for info in infos})

    monkeypatch.setattr(bridge.urlguard, "resolve", resolve)
    return table


def png_route(data: bytes = PNG):
    return respond(data, content_type="image/png")


def png_without_length(data: bytes):
    """A route streaming `data` with no Content-Length (the body's end is the connection's)."""

    def route(h):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.end_headers()
        h.wfile.write(data)

    return route


# --- event shapes ---------------------------------------------------------------------


def test_direct_invoke_with_base64_image(call_bridge, runtime_stub, bridge_config):
    expect_invoke(runtime_stub, PNG, "image/png")
    assert call_bridge({"image": base64.b64encode(PNG).decode()}, bridge_config) == (200, PREDICTION)


def test_direct_invoke_with_s3_uri(call_bridge, runtime_stub, s3_stub, bridge_config):
    key = "shapes/inference/cat.jpg"
    s3_stub.add_response("head_object", {"ContentLength": len(JPEG)}, {"Bucket": "smv-bucket", "Key": key})
    s3_stub.add_response("get_object", {"Body": StreamingBody(io.BytesIO(JPEG), len(JPEG))}, {"Bucket": "smv-bucket", "Key": key})
    expect_invoke(runtime_stub, JPEG, "image/jpeg")
    assert call_bridge({"s3_uri": f"s3://smv-bucket/{key}"}, bridge_config) == (200, PREDICTION)


def test_api_gateway_v1_json_url(call_bridge, runtime_stub, bridge_config, site, allow_loopback, fake_dns):
    base = site.url
    site.routes["/img/cat.png?size=64"] = png_route()
    expect_invoke(runtime_stub, PNG, "image/png")
    event = {
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "isBase64Encoded": False,
        "body": json.dumps({"url": f"{base}/img/cat.png?size=64"}),
    }
    assert call_bridge(event, bridge_config) == (200, PREDICTION)


def test_host_name_is_pinned_to_the_checked_address(call_bridge, runtime_stub, bridge_config, site, allow_loopback, fake_dns):
    hosts = []

    def record_host(h):
        hosts.append(h.headers.get("Host"))
        png_route()(h)

    fake_dns["images.example.test"] = ["127.0.0.1"]
    site.routes["/dog.png"] = record_host
    expect_invoke(runtime_stub, PNG, "image/png")
    status, _ = call_bridge({"url": f"http://images.example.test:{site.port}/dog.png"}, bridge_config)
    assert status == 200 and hosts == [f"images.example.test:{site.port}"]


def test_api_gateway_v2_base64_image_body(call_bridge, runtime_stub, bridge_config):
    expect_invoke(runtime_stub, JPEG, "image/jpeg")
    event = {
        "version": "2.0",
        "requestContext": {"http": {"method": "POST"}},
        "headers": {"content-type": "image/jpeg"},
        "isBase64Encoded": True,
        "body": base64.b64encode(JPEG).decode(),
    }
    assert call_bridge(event, bridge_config) == (200, PREDICTION)


def test_api_gateway_raw_url_with_string_url_content_type(call_bridge, runtime_stub, bridge_config, site, allow_loopback, fake_dns):
    base = site.url
    site.routes["/a.png"] = png_route()
    expect_invoke(runtime_stub, PNG, "image/png")
    event = {"httpMethod": "POST", "headers": {"content-type": "string/url"}, "body": f"{base}/a.png\n"}
    assert call_bridge(event, bridge_config) == (200, PREDICTION)


def test_api_gateway_json_with_base64_image(call_bridge, runtime_stub, bridge_config):
    expect_invoke(runtime_stub, PNG, "image/png")
    event = {
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json; charset=utf-8"},
        "body": json.dumps({"image": base64.b64encode(PNG).decode()}),
    }
    assert call_bridge(event, bridge_config) == (200, PREDICTION)


# --- bad requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "event, status, message",
    [
        ({"httpMethod": "POST", "headers": {}, "body": ""}, 400, "empty request body"),
        ({"httpMethod": "POST", "headers": {"content-type": "application/json"}, "body": "{not json"}, 400, "not JSON"),
        ({"httpMethod": "POST", "headers": {}, "body": "%%%", "isBase64Encoded": True}, 400, "base64"),
        ({"url": "http://x.test/a.png", "image": "aGVsbG8="}, 400, "exactly one"),
        ({}, 400, "exactly one"),
        ({"url": 42}, 400, "must be a string"),
        ({"image": "not base64!!"}, 400, "not valid base64"),
        ({"image": base64.b64encode(b"GIF89a....").decode()}, 415, "not a JPEG or PNG"),
        ({"image": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 300_000).decode()}, 413, "limit"),
        ({"s3_uri": "s3://other-bucket/shapes/inference/a.jpg"}, 403, "outside"),
        ({"s3_uri": "s3://smv-bucket/shapes/private/a.jpg"}, 403, "outside"),
        ({"s3_uri": "s3://smv-bucket/shapes/inference/../private/a.jpg"}, 403, "outside"),
        ({"s3_uri": "s3://smv-bucket"}, 400, "not an s3://bucket/key"),
        (["not", "an", "object"], 400, "JSON object"),
    ],
)
def test_bad_requests(call_bridge, bridge_config, event, status, message):
    code, body = call_bridge(event, bridge_config)
    assert code == status and message in body["error"]


def test_s3_disabled_without_prefix(bridge, call_bridge):
    config = bridge.Config(endpoint_name=LAMBDA_ENDPOINT)
    assert call_bridge({"s3_uri": "s3://smv-bucket/shapes/inference/a.jpg"}, config)[0] == 403


def test_missing_s3_object_is_404(call_bridge, s3_stub, bridge_config):
    key = "shapes/inference/missing.jpg"
    s3_stub.add_client_error(
        "head_object", service_error_code="404", http_status_code=404, expected_params={"Bucket": "smv-bucket", "Key": key}
    )
    assert call_bridge({"s3_uri": f"s3://smv-bucket/{key}"}, bridge_config)[0] == 404


def test_large_s3_object_is_refused_before_download(call_bridge, s3_stub, bridge_config):
    key = "shapes/inference/huge.jpg"
    s3_stub.add_response("head_object", {"ContentLength": 10_000_000}, {"Bucket": "smv-bucket", "Key": key})
    assert call_bridge({"s3_uri": f"s3://smv-bucket/{key}"}, bridge_config)[0] == 413


@pytest.mark.parametrize("code, status", [("ModelError", 502), ("ThrottlingException", 429), ("ValidationError", 502)])
def test_endpoint_errors(call_bridge, runtime_stub, bridge_config, code, status):
    runtime_stub.add_client_error(
        "invoke_endpoint",
        service_error_code=code,
        service_message="boom",
        http_status_code=400,
        expected_params={"EndpointName": LAMBDA_ENDPOINT, "ContentType": "image/png", "Accept": "application/json", "Body": PNG},
    )
    result, body = call_bridge({"image": base64.b64encode(PNG).decode()}, bridge_config)
    assert result == status and "Traceback" not in body["error"]


def test_non_json_endpoint_reply_is_502(call_bridge, runtime_stub, bridge_config):
    runtime_stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(b"<html>"), 6)}, None)
    assert call_bridge({"image": base64.b64encode(PNG).decode()}, bridge_config)[0] == 502


# --- the URL guard (no connection is ever opened for these) -----------------------


@pytest.fixture
def no_connections(bridge, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"the guard let a connection through: {args}")

    monkeypatch.setattr(bridge.urlguard.socket, "create_connection", refuse)


@pytest.mark.parametrize(
    "url, status",
    [
        ("file:///etc/passwd", 400),
        ("ftp://example.test/a.png", 400),
        ("gopher://example.test/", 400),
        ("javascript:alert(1)", 400),
        ("http:///no-host", 400),
        ("http://user:secret@example.test/a.png", 400),
        ("http://example.test:99999/a.png", 400),
        ("http://127.0.0.1/a.png", 403),
        ("http://127.1.2.3:8080/", 403),
        ("http://localhost/a.png", 403),
        ("http://LOCALHOST./a.png", 403),
        ("http://0.0.0.0/", 403),
        ("http://[::1]/", 403),
        ("http://[::]/", 403),
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", 403),
        ("http://169.254.170.2/v2/credentials", 403),
        ("http://[fd00:ec2::254]/latest/meta-data/", 403),
        ("http://[::ffff:169.254.169.254]/", 403),
        ("http://[::ffff:127.0.0.1]/", 403),
        ("http://[2002:7f00:1::]/", 403),
        ("http://10.0.0.5/", 403),
        ("http://172.16.3.4/", 403),
        ("http://192.168.1.1/", 403),
        ("http://100.64.0.1/", 403),
        ("http://224.0.0.1/", 403),
        ("http://2130706433/", 403),
        ("http://0x7f000001/", 403),
        ("http://metadata.internal.test/", 403),
        ("http://rebind.example.test/", 403),
        # parser differentials: what the guard and a WHATWG-style client read differently
        ("http://169.254.169.254\\@example.test/../latest/meta-data/", 400),
        ("http://example.test\\@169.254.169.254/", 400),
        ("http://example.test@169.254.169.254/", 400),
        ("http://@example.test/", 400),
        ("http://example.test/a b", 400),
        ("http://example.test/\x00", 400),
        ("http://exa%6dple.test/", 400),
        ("http://[fe80::1%25eth0]/", 400),
        # non-global IPv6 forms
        ("http://[fec0::1]/", 403),
        ("http://[2002:5db8:d822::1]/", 403),
        ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", 403),
        ("http://[64:ff9b::a9fe:a9fe]/", 403),
        ("http://[::7f00:1]/", 403),
    ],
)
def test_refused_urls(call_bridge, bridge_config, fake_dns, no_connections, url, status):
    fake_dns["localhost"] = ["127.0.0.1", "::1"]
    fake_dns["metadata.internal.test"] = ["169.254.169.254"]
    fake_dns["rebind.example.test"] = ["93.184.216.34", "10.1.2.3"]  # one public, one private
    code, body = call_bridge({"url": url}, bridge_config)
    assert (code, url) == (status, url), body


def test_public_address_passes_the_guard(bridge, bridge_config, fake_dns):
    fake_dns["images.example.test"] = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    target = bridge.urlguard.check_url("https://images.example.test/a/b.png?x=1", bridge.url_policy(bridge_config))
    assert target == bridge.urlguard.Target("https", "images.example.test", 443, "93.184.216.34", "/a/b.png?x=1")


def test_host_allow_list(bridge, fake_dns):
    fake_dns["cdn.example.test"] = ["93.184.216.34"]
    config = bridge.Config(endpoint_name=LAMBDA_ENDPOINT, allowed_url_hosts=("images.example.test",))
    with pytest.raises(bridge.urlguard.FetchError) as err:
        bridge.urlguard.check_url("https://cdn.example.test/a.png", bridge.url_policy(config))
    assert err.value.status == 403


def test_real_resolver_refuses_localhost(bridge, bridge_config):
    """No fake: the real resolve() (from /etc/hosts, no DNS) must refuse localhost."""
    with pytest.raises(bridge.urlguard.FetchError) as err:
        bridge.urlguard.check_url("http://localhost:9/", bridge.url_policy(bridge_config))
    assert err.value.status == 403


# --- fetching from the loopback server -------------------------------------------


def test_redirect_to_metadata_is_refused(call_bridge, bridge_config, site, allow_loopback, fake_dns):
    base = site.url
    site.routes["/r"] = redirect("http://169.254.169.254/latest/meta-data/")
    code, body = call_bridge({"url": f"{base}/r"}, bridge_config)
    assert code == 403 and "169.254.169.254" in body["error"]


def test_relative_redirect_is_followed(call_bridge, runtime_stub, bridge_config, site, allow_loopback, fake_dns):
    base = site.url
    site.routes["/r"] = redirect("/final.png")
    site.routes["/final.png"] = png_route()
    expect_invoke(runtime_stub, PNG, "image/png")
    assert call_bridge({"url": f"{base}/r"}, bridge_config)[0] == 200


def test_redirect_loop_is_cut(call_bridge, bridge_config, site, allow_loopback, fake_dns):
    base = site.url
    site.routes["/loop"] = redirect("/loop")
    code, body = call_bridge({"url": f"{base}/loop"}, bridge_config)
    assert code == 502 and "redirected more than" in body["error"]


@pytest.mark.parametrize("content_length", [True, False])
def test_oversized_download_is_cut(call_bridge, bridge_config, site, allow_loopback, fake_dns, content_length):
    base = site.url
    site.routes["/big.png"] = (png_route if content_length else png_without_length)(PNG + b"\0" * 400_000)
    assert call_bridge({"url": f"{base}/big.png"}, bridge_config)[0] == 413


def test_upstream_error_is_502(call_bridge, bridge_config, site, allow_loopback, fake_dns):
    base = site.url
    code, body = call_bridge({"url": f"{base}/missing.png"}, bridge_config)
    assert code == 502 and "404" in body["error"]


def test_slow_server_times_out(bridge, call_bridge, site, allow_loopback, fake_dns):
    base = site.url

    def slow(h):
        time.sleep(1.5)
        png_route()(h)

    site.routes["/slow.png"] = slow
    config = bridge.Config(endpoint_name=LAMBDA_ENDPOINT, fetch_timeout_s=0.5)
    started = time.monotonic()
    assert call_bridge({"url": f"{base}/slow.png"}, config)[0] == 504
    assert time.monotonic() - started < 1.4


def test_config_from_env(bridge):
    config = bridge.Config.from_env(
        {
            "ENDPOINT_NAME": "ep",
            "ALLOWED_S3_PREFIX": "s3://b/p/",
            "MAX_IMAGE_BYTES": "1000",
            "FETCH_TIMEOUT_S": "2.5",
            "ALLOWED_URL_HOSTS": "A.example.test, b.example.test",
        }
    )
    assert config == bridge.Config("ep", "s3://b/p/", 1000, 2.5, ("a.example.test", "b.example.test"))
    with pytest.raises(RuntimeError, match="ENDPOINT_NAME"):
        bridge.Config.from_env({})


def test_lambda_handler_wires_env_and_clients(bridge, runtime_stub, s3_stub, monkeypatch):
    monkeypatch.setenv("ENDPOINT_NAME", LAMBDA_ENDPOINT)
    monkeypatch.setattr(bridge, "_clients", lambda: (runtime_stub.client, s3_stub.client))
    expect_invoke(runtime_stub, PNG, "image/png")
    result = bridge.lambda_handler({"image": base64.b64encode(PNG).decode()}, None)
    assert result["statusCode"] == 200 and json.loads(result["body"]) == PREDICTION


def _third_party_imports(path):
    import ast

    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name for name in imported if name not in sys.stdlib_module_names and name != "__future__"}


def test_handler_needs_only_boto3_and_the_standard_library():
    # urlguard ships in the zip next to handler.py (serve/urlguard.py in a checkout).
    assert _third_party_imports(REPO / "aws" / "lambda" / "handler.py") <= {"boto3", "botocore", "urlguard", "serve"}
    assert _third_party_imports(REPO / "serve" / "urlguard.py") == set()


# --- HTTPS: the pinned connection still verifies the certificate for the host name ---


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
            "-subj",
            "/CN=images.example.test",
            "-addext",
            "subjectAltName=DNS:images.example.test",
        ],
        check=True,
        capture_output=True,
    )
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def tls_server(site, tls_cert):
    """The loopback site speaking TLS with the test certificate; the SNI names it was sent."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_cert)
    sni = []
    context.sni_callback = lambda sock, name, ctx: sni.append(name)
    site.httpd.socket = context.wrap_socket(site.httpd.socket, server_side=True)
    return site.port, sni


@pytest.fixture
def trust_test_cert(bridge, monkeypatch, tls_cert):
    import ssl

    real = ssl.create_default_context
    monkeypatch.setattr(bridge.urlguard.ssl, "create_default_context", lambda *a, **k: real(cafile=str(tls_cert[0])))


def test_https_fetch_is_pinned_with_sni_and_verified(
    call_bridge, runtime_stub, site, bridge_config, tls_server, allow_loopback, fake_dns, trust_test_cert
):
    port, sni = tls_server
    fake_dns["images.example.test"] = ["127.0.0.1"]
    site.routes["/cat.png"] = png_route()
    expect_invoke(runtime_stub, PNG, "image/png")
    status, body = call_bridge({"url": f"https://images.example.test:{port}/cat.png"}, bridge_config)
    assert status == 200, body
    assert sni == ["images.example.test"]


def test_https_certificate_for_another_name_is_refused(
    call_bridge, site, bridge_config, tls_server, allow_loopback, fake_dns, trust_test_cert
):
    port, _ = tls_server
    fake_dns["other.example.test"] = ["127.0.0.1"]
    site.routes["/cat.png"] = png_route()
    code, body = call_bridge({"url": f"https://other.example.test:{port}/cat.png"}, bridge_config)
    assert code == 502 and "SSL" in body["error"]


# --- the deadline, rebinding and odd inputs (issue 12: 4, 5, 15) ------------------------


def test_whole_fetch_has_one_deadline(call_bridge, bridge_config, site, allow_loopback, fake_dns):
    """A server dripping a byte at a time never trips a per-read timeout; the
    wall-clock deadline (FETCH_TIMEOUT_S=2) cuts it off anyway."""
    base = site.url
    site.routes["/drip"] = drip(1000)
    start = time.monotonic()
    code, body = call_bridge({"url": f"{base}/drip"}, bridge_config)
    assert code == 504 and time.monotonic() - start < bridge_config.fetch_timeout_s + 1.5, body


def test_dns_is_resolved_once_and_pinned(bridge, call_bridge, runtime_stub, bridge_config, monkeypatch):
    """A resolver that answers differently the second time (DNS rebinding): the
    fetch connects to the first, checked answer, whatever later lookups say."""
    served = []

    def answer_as(name):
        def route(h):
            served.append(name)
            png_route()(h)

        return route

    with Site("127.0.0.1", routes={"/img.png": answer_as("public")}) as public:
        port = public.port
        try:
            secret = Site("127.0.0.2", port, routes={"/img.png": answer_as("secret")})
        except OSError:
            pytest.fail("cannot bind 127.0.0.2 on the same port")
        with secret:
            answers = iter([["127.0.0.1"]] + [["127.0.0.2"]] * 10)
            real_getaddrinfo = socket.getaddrinfo

            def rebinding(host, *args, **kwargs):
                if host == "rebind.example.test":
                    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers)[0], port))]
                return real_getaddrinfo(host, *args, **kwargs)

            monkeypatch.setattr(socket, "getaddrinfo", rebinding)
            monkeypatch.setattr(bridge.urlguard, "address_is_public", lambda ip: str(ip) == "127.0.0.1")
            expect_invoke(runtime_stub, PNG, "image/png")
            assert call_bridge({"url": f"http://rebind.example.test:{port}/img.png"}, bridge_config)[0] == 200
    assert served == ["public"]


@pytest.mark.parametrize(
    "event",
    [
        {"httpMethod": "POST", "headers": {"content-type": "application/json"}, "body": {"url": "http://x.test/"}},
        {"httpMethod": "POST", "headers": {"content-type": "application/json"}, "body": 42},
        {"httpMethod": "POST", "headers": None, "body": "{}"},
        {"httpMethod": "POST", "headers": ["content-type", "image/png"], "body": "{}"},
        {"httpMethod": "POST", "headers": {"content-type": None}, "body": "{}"},
        {"httpMethod": "POST", "headers": {"content-type": "image/png"}, "body": "\u2603 not latin-1"},
        {"httpMethod": "POST", "headers": {"content-type": "application/json"}, "body": "[" * 100_000},
        {"httpMethod": "POST", "headers": {"content-type": "application/json"}, "body": "null"},
        {"httpMethod": "POST", "headers": {"content-type": "string/url"}, "body": "http://x.test/\u00e9\u00e9"},
        {"httpMethod": "POST", "headers": {"content-type": "string/url"}, "body": "http://[::1"},
        {"httpMethod": "POST", "headers": {"content-type": "string/url"}, "body": "http://a..b/"},
        {"httpMethod": "POST", "headers": {"content-type": "string/url"}, "body": "http://x.test:0/"},
        {"url": "http://" + "a" * 3000 + ".test/"},
        {"url": ["http://x.test/"]},
        {"s3_uri": "s3://[bucket/key"},
        {"image": "\u00e9\u00e9\u00e9\u00e9"},
    ],
)
def test_odd_events_are_400(call_bridge, bridge_config, event):
    code, body = call_bridge(event, bridge_config)
    assert code == 400, body
    assert "Traceback" not in body["error"]


def test_odd_redirect_location_is_not_a_500(call_bridge, bridge_config, site, allow_loopback, fake_dns):
    base = site.url
    site.routes["/r"] = redirect("http://[::1")
    code, body = call_bridge({"url": f"{base}/r"}, bridge_config)
    assert code in (400, 502), body
