"""Issue 22 through the real image: a request's work is bounded before it starts and
stops when its answer has gone. Each test is one finding of the review, with the small
crafted input that used to cost the server far more than its size (tests/support/bombs.py).

Two servers: our classifier (short deadlines, so the deadline tests take seconds, and
two CPUs, so two decode threads whatever the host has), and a user's model with only a
model_fn, whose requests take the tensor path (JSON, CSV, .npy, .npz)."""

from __future__ import annotations

import io
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.support import bombs
from tests.support.containers import Containers, host_port, mount, wait_for_log, wait_ping
from tests.support.endpoint import model_root, post, script_model_root, start_loopback_helper, start_server
from tests.support.payloads import png_bytes

TIMEOUT_S = 4  # SAGEMAKER_MODEL_SERVER_TIMEOUT of the classifier server
BODY_TIMEOUT_S = 2

# A user's model whose requests take the tensor path (the default input_fn); predict_fn
# answers the input's shape and logs a header the client chose, through a log handler
# of the script's own.
USER_MODEL = r"""
import logging, sys
import torch

log = logging.getLogger("user_model")
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("user_model: %(message)s"))
log.addHandler(handler)
log.propagate = False

def model_fn(model_dir):
    return torch.nn.Identity()

def predict_fn(data, model, context):
    note = context.get_request_header(0, "x-note")
    if note:
        log.warning("note from the client: %s", note)
    return {"shape": list(model(data).shape)}
"""


@pytest.fixture(scope="module")
def classifier(image, docker_client, model_store, tmp_path_factory):
    handle = Containers(docker_client)
    try:
        root = model_root(tmp_path_factory.mktemp("limits"), model_store)
        env = {
            "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(TIMEOUT_S),
            "SM_VISION_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "SM_VISION_URL_ALLOW": "127.0.0.1:9000",
            "SM_VISION_URL_TIMEOUT_S": "3",
            "SM_VISION_MAX_JPEG_SCANS": "100000",  # scan bombs get through to the decoder: the deadline must stop them
            "SM_VISION_ACCESS_LOG": "json",
        }
        container = handle.run(image, ["serve"], volumes=mount(root), environment=env, ports={"8080/tcp": None}, nano_cpus=2_000_000_000)
        base = f"http://127.0.0.1:{host_port(container)}"
        wait_ping(base, container)
        start_loopback_helper(container)
        yield base, container
    finally:
        handle.cleanup()


@pytest.fixture(scope="module")
def user_model(image, docker_client, tmp_path_factory):
    handle = Containers(docker_client)
    try:
        root = script_model_root(tmp_path_factory.mktemp("user_model"), USER_MODEL)
        container, base = start_server(handle, image, root, mem_limit="3g")
        wait_ping(base, container)
        yield base, container
    finally:
        handle.cleanup()


def peak_rss_since(container, action) -> int:
    """The server's peak resident memory above its level before `action()` (bytes):
    the kernel's high-water mark, reset first (/proc/PID/clear_refs)."""
    assert container.exec_run(["sh", "-c", "echo 5 > /proc/1/clear_refs"]).exit_code == 0

    def resident(field: str) -> int:
        status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024

    before = resident("VmRSS")
    action()
    return resident("VmHWM") - before


def json_body(value) -> bytes:
    return json.dumps(value).encode()


def assert_error(response, status: int, words: str = ""):
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"], response.text
    assert "Traceback" not in response.text


# --- costs bounded before they are paid (the tensor path) -------------------------------------


def test_bzip2_npz_bomb_is_refused_unread(user_model):
    """1,662 bytes declaring 1.9 GiB: three of them OOM-killed the server."""
    base, container = user_model
    bomb = bombs.bzip2_npz_bomb_1_9_gib()

    def three():
        for _ in range(3):
            assert_error(post(base, bomb, "application/x-npz"), 422, "bzip2")

    assert peak_rss_since(container, three) < 64 << 20
    # A deflate member inflating to 256 MiB behind a 16-float header is read as what it declares.
    overrun = bombs.deflate_npz_overrun(declared_floats=16, inflates_to=256 << 20)
    answers = []
    assert peak_rss_since(container, lambda: answers.append(post(base, overrun, "application/x-npz"))) < 64 << 20
    assert answers[0].json() == {"shape": [16]}, answers[0].text
    fine = io.BytesIO()
    np.savez_compressed(fine, x=np.ones((2, 3), np.float32))
    assert post(base, fine.getvalue(), "application/x-npz").json() == {"shape": [2, 3]}


def test_csv_is_read_by_numpys_c_reader(user_model):
    """A 6 MB CSV cost +521 MiB and 9 s when each cell became a Python float."""
    base, container = user_model
    rows = 1000
    row = ",".join(["0.5"] * 1499) + "\n"  # 1.5 M cells, ~6 MB
    body = (row * rows).encode()
    started = time.monotonic()
    answers = []
    send = lambda: answers.append(requests.post(base + "/invocations", data=body, headers={"Content-Type": "text/csv"}, timeout=60))  # noqa: E731
    peak = peak_rss_since(container, send)
    assert answers[0].json() == {"shape": [rows, 1499]}, answers[0].text
    assert time.monotonic() - started < 5
    assert peak < 5 * len(body) + (32 << 20)  # the body's text, once as floats; not 40-90 times the body


@pytest.mark.parametrize(
    "body, ctype, status",
    [
        (bombs.npy_header((2**40,), "<f4"), "application/x-npy", 400),  # declares 4 TiB in a 128-byte body
        (b"\x93NUMPY\x01\x00\xff\xff" + b"{" * 65535, "application/x-npy", 400),  # a 64 KiB header: MemoryError in numpy
        (bombs.npy_header((3, 0, 0), "<f4"), "application/x-npy", 422),  # no elements
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),  # RecursionError in json
    ],
    ids=["npy-4tib", "npy-huge-header", "npy-empty", "json-deep"],
)
def test_tensor_bodies_that_were_500s_are_4xx(user_model, body, ctype, status):
    base, _ = user_model
    assert_error(post(base, body, ctype), status)
    assert post(base, b"1,2\n3,4\n", "text/csv").json() == {"shape": [2, 2]}


def test_image_bombs_are_refused_before_decoding(user_model):
    """The scan cap and the format allow-list hold on every model's image path."""
    base, container = user_model
    scans = bombs.scan_bomb(5_000)  # 165 KB: tens of seconds of libjpeg
    started = time.monotonic()
    assert_error(post(base, scans, "image/jpeg"), 413, "scans")
    assert time.monotonic() - started < 3
    assert peak_rss_since(container, lambda: assert_error(post(base, bombs.ico_bomb(), "image/x-icon"), 422, "ICO")) < 32 << 20


def test_client_text_in_the_log_is_escaped(user_model):
    """What a client sends reaches the log through any logger (here a user hook's, with
    its own handler), with its control characters escaped: C1 CSI (\\x9b) is ESC [
    for many terminals."""
    base, container = user_model
    response = requests.post(
        base + "/invocations", data=b"1,2", headers={"Content-Type": "text/csv", "X-Note": b"\x9b2J\x9b31mcleared"}, timeout=30
    )
    assert response.status_code == 200, response.text
    # The script's own handler, escaped; docker's log driver may lag the answer a little.
    wait_for_log(container, re.escape("user_model: note from the client: \\x9b2J\\x9b31mcleared"), timeout=30)
    logs = container.logs()
    assert b"\xc2\x9b" not in logs and b"\x9b2J" not in logs


# --- numbers from clients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "top_k", ["\u00b2", "9" * 5000, "\u0663", "1_0", "0"], ids=["superscript", "5000-digits", "arabic-indic", "underscore", "zero"]
)
def test_top_k_goes_through_the_strict_parser(classifier, top_k):
    base, _ = classifier
    response = requests.post(
        base + "/invocations", params={"top_k": top_k}, data=png_bytes(), headers={"Content-Type": "image/png"}, timeout=30
    )
    assert_error(response, 400, "top_k")
    assert len(response.text) < 300


def test_an_empty_float_array_is_422_not_a_500(classifier):
    base, _ = classifier
    assert_error(post(base, bombs.npy_header((3, 0, 0), "<f4"), "application/x-npy"), 422, "no elements")


def test_an_upstream_content_length_that_is_no_number_is_not_a_500(classifier):
    base, _ = classifier
    response = post(base, json_body({"url": "http://127.0.0.1:9000/odd-length"}), "application/json")
    assert response.status_code in (200, 400), response.text
    assert "Traceback" not in response.text


# --- slow clients and ambiguous requests ----------------------------------------------------------


def raw_exchange(base: str, data: bytes, wait_s: float = 10) -> bytes:
    """What the server sends back on one connection until it closes it (or wait_s passes)."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
    return received


def test_a_request_with_both_content_length_and_chunked_is_refused_and_closed(classifier):
    """Framed by Transfer-Encoding, the bytes after the chunked body were served as a
    second request: a proxy that reads Content-Length would let it be smuggled in."""
    base, _ = classifier
    smuggled = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
    request = (
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {5 + len(smuggled)}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + smuggled
    )
    answer = raw_exchange(base, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1 and not answer.endswith(b"<still open>"), answer


def test_trickling_bodies_hold_no_slot_and_are_cut_with_408(classifier):
    """64 sockets trickling bodies (SM_VISION_MAX_PENDING=64) used to hold every
    admission slot, so every other client got 503 for as long as they stayed open."""
    base, _ = classifier
    port = int(base.rsplit(":", 1)[1])
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    sockets = []
    try:
        for _ in range(64):
            sock = socket.create_connection(("127.0.0.1", port), timeout=15)
            sock.sendall(head + b"\x89")
            sockets.append(sock)
        time.sleep(0.5)
        started = time.monotonic()
        response = post(base, png_bytes(), "image/png")
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 5
        answers = []
        for sock in sockets:  # each is answered 408 once its body is overdue, then closed
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            answers.append(received)
    finally:
        for sock in sockets:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers[:3]
    assert b"SM_VISION_BODY_TIMEOUT_S" in answers[0]


# --- the work stops when its answer has gone --------------------------------------------------------


def slow_urls(count: int) -> bytes:
    return json_body({"instances": [{"url": "http://127.0.0.1:9000/slow.png"}] * count})


def served_soon(base: str, within_s: float = 3) -> None:
    """Two plain requests at once are answered promptly: both decode threads are free."""
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: post(base, png_bytes(), "image/png"), range(2)))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert time.monotonic() - started < within_s


@pytest.fixture
def idle(classifier):
    """The classifier server with both decode threads free (whatever an earlier test left running)."""
    base, _ = classifier
    deadline = time.monotonic() + 60
    while True:
        try:
            served_soon(base)
            return classifier
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_a_request_of_slow_urls_stops_at_its_deadline(idle):
    """Two requests of 8 URLs taking 1.5 s each (2 decode threads): each answer is a
    504 at the deadline, and the threads stop fetching then instead of 8 x 1.5 s later."""
    base, _ = idle
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: post(base, slow_urls(8), "application/json"), range(2)))
    assert [a.status_code for a in answers] == [504, 504], [a.text for a in answers]
    served_soon(base)


def test_work_stops_when_its_client_leaves(idle):
    base, _ = idle
    port = int(base.rsplit(":", 1)[1])
    body = slow_urls(8)
    head = f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    for _ in range(2):  # one per decode thread
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(head.encode() + body)
            time.sleep(0.3)  # its first fetch has started; then it hangs up
    time.sleep(1.6)  # the item in progress ends; the next one is never started
    served_soon(base)


def test_a_scan_bomb_is_killed_at_the_deadline(idle):
    """With the scan cap lifted, a progressive JPEG of 20,000 scans decodes for tens of
    seconds inside one libjpeg call: the decode pool kills it at the deadline."""
    base, container = idle
    bomb = bombs.scan_bomb(20_000, (1024, 1024))
    assert len(bomb) < 6 << 20
    started = time.monotonic()
    response = post(base, bomb, "image/jpeg")
    assert_error(response, 504)
    assert time.monotonic() - started < TIMEOUT_S + 3
    served_soon(base)
    assert "killed at the request's deadline" in container.logs().decode(errors="replace")
    progressive = post(base, bombs.progressive_jpeg((96, 64)), "image/jpeg")  # an ordinary progressive photo: the pool decodes it
    assert progressive.status_code == 200, progressive.text
