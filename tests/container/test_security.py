"""Issue 12 through the real image: the holes an adversarial review found stay closed
in the running server. URL traffic goes only to a helper on the container's own
loopback; host names come from the container's /etc/hosts (extra_hosts), never DNS."""

from __future__ import annotations

import base64
import io
import json
import random
import socket
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support import bombs
from tests.support.bombs import blank_png
from tests.support.containers import Containers, host_port, wait_ping
from tests.support.endpoint import model_root, post, script_model_root, start_loopback_helper, start_server
from tests.support.payloads import jpeg_bytes, npy_bytes, png_bytes

RED = Image.new("RGB", (80, 60), (200, 30, 30))


@pytest.fixture(scope="module")
def server(image, docker_client, model_store, tmp_path_factory):
    """The default server with the loopback helper (allow-listed) and a public-looking
    name for the helper's own address trick."""
    handle = Containers(docker_client)
    try:
        root = model_root(tmp_path_factory.mktemp("security"), model_store)
        env = {"SM_VISION_URL_ALLOW": "127.0.0.1:9000", "SM_VISION_URL_TIMEOUT_S": "2", "SM_VISION_HEADER_TIMEOUT_S": "2"}
        container = handle.run(
            image,
            ["serve"],
            volumes={str(root): {"bind": "/opt/ml", "mode": "rw"}},
            environment=env,
            ports={"8080/tcp": None},
            extra_hosts={"images.example.test": "93.184.216.34"},
            mem_limit="6g",
        )
        base = f"http://127.0.0.1:{host_port(container)}"
        wait_ping(base, container)
        start_loopback_helper(container)
        yield base, container
    finally:
        handle.cleanup()


def url_body(url: str) -> bytes:
    return json.dumps({"url": url}).encode()


# --- 1, 4: URL fetching ---------------------------------------------------------------


def test_url_fetch_still_works(server):
    base, _ = server
    response = post(base, url_body("http://127.0.0.1:9000/img.png"), "application/json")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000\\@images.example.test/../img.png",  # the guard saw images.example.test; the client went to :9000
        "http://images.example.test\\@127.0.0.1:9000/img.png",
        "http://images.example.test@127.0.0.1:9000/img.png",
        "http://[2002:7f00:1::]:9000/img.png",
        "http://[fec0::1]/img.png",
    ],
)
def test_parser_tricks_and_non_global_addresses_are_refused(server, url):
    base, _ = server
    response = post(base, url_body(url), "application/json")
    assert response.status_code == 400, response.text
    assert "Traceback" not in response.text


def test_a_dripping_url_is_cut_at_the_deadline(server):
    base, _ = server
    start = time.monotonic()
    response = post(base, url_body("http://127.0.0.1:9000/drip"), "application/json")
    assert response.status_code == 400 and "longer than 2 s" in response.json()["error"]
    assert time.monotonic() - start < 6
    assert post(base, png_bytes(RED), "image/png").status_code == 200


# --- 2, 12, 20: decoding ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, ctype",
    [
        (blank_png(16000, 1), "image/png"),
        (blank_png(40_000_000, 1), "image/png"),
        (json.dumps({"image": base64.b64encode(blank_png(16000, 1)).decode()}).encode(), "application/json"),
        (npy_bytes(np.zeros((1, 20000, 3), np.uint8)), "application/x-npy"),
    ],
    ids=["16000x1", "40Mx1", "json-b64", "npy"],
)
def test_aspect_ratio_bombs_are_413_naming_the_limit(server, body, ctype):
    base, container = server
    response = post(base, body, ctype)
    assert response.status_code == 413 and "aspect ratio" in response.json()["error"], response.text
    assert requests.get(base + "/ping", timeout=5).status_code == 200


def test_16_bit_png_and_exif_orientation(server):
    base, _ = server
    gray16 = (np.full((64, 64), 65535 // 2)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(gray16).save(buffer, "PNG")
    mid = Image.new("RGB", (64, 64), (127, 127, 127))
    # Same answer as the 8-bit image of the same grey (Pillow's own convert made it white).
    a, b = post(base, buffer.getvalue(), "image/png").json(), post(base, png_bytes(mid), "image/png").json()
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
    # A photo stored sideways with EXIF Orientation 6 answers as its upright version.
    stored = Image.new("RGB", (40, 80), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = io.BytesIO()
    stored.save(sideways, "PNG", exif=exif.tobytes())
    upright = stored.transpose(Image.Transpose.ROTATE_270)
    a, b = post(base, sideways.getvalue(), "image/png").json(), post(base, png_bytes(upright), "image/png").json()
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
    as_stored = post(base, png_bytes(stored), "image/png").json()  # the model does tell the two apart
    assert as_stored["probabilities"] != pytest.approx(b["probabilities"], abs=1e-4)


# --- 17: stalled connections -----------------------------------------------------------------


def test_stalled_connections_are_closed(server):
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    sockets = []
    for index in range(40):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if index % 2:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        sockets.append(sock)
    time.sleep(4)  # SM_VISION_HEADER_TIMEOUT_S=2
    still_open = 0
    for sock in sockets:
        sock.settimeout(1)
        try:
            if sock.recv(1024) != b"":
                still_open += 1
        except TimeoutError:
            still_open += 1
        except OSError:
            pass  # reset: closed
        sock.close()
    assert still_open == 0
    assert requests.get(base + "/ping", timeout=5).status_code == 200


# --- fuzz over the decode paths ----------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6:
            del data[rng.randrange(len(data) + 1) :]
        elif choice < 0.8:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif len(data) > 24:
            data[16:24] = struct.pack(">II", rng.choice([1, 65535, 2**31 - 1, 0]), rng.choice([1, 65535, 2**31 - 1, 0]))
    return bytes(data)


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (valid CRC) over a tiny IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _fuzz_cases(seed: int, count: int):
    rng = random.Random(seed)
    png, jpeg = png_bytes(RED), jpeg_bytes(RED)
    seeds = {
        "image/png": png,
        "image/jpeg": jpeg,
        "image/pjpeg": bombs.progressive_jpeg((80, 60)),  # decoded in the decode pool's processes
        "image/x-icon": bombs.ico_bomb(600),  # refused by format, before Pillow's ICO plugin reads it
        "application/x-npy": npy_bytes(np.asarray(RED)),
        "application/json": json.dumps({"image": base64.b64encode(png).decode()}).encode(),
    }
    crafted = [
        ("image/jpeg", bombs.scan_bomb(300)),  # over the 100-scan cap: 413 from its markers
        ("image/jpeg", bombs.scan_bomb(60, (256, 256))),  # under it: a real multi-scan decode in the pool
        ("image/x-icns", b"icns" + struct.pack(">I", 64) + b"ic08" + struct.pack(">I", 56) + blank_png(4000, 4000)[:48]),
    ]
    odd_json = [
        b"[" * 50_000,
        b'{"instances": {"a": 1}}',
        b'{"image": 5}',
        b'{"url": ["x"]}',
        b'{"url": "http://[::1"}',
        b'{"url": "gopher://127.0.0.1:9000/"}',
        b'{"b64": {"b64": null}}',
        b"\xff\xfe{}",
        b"1e999999",
        json.dumps({"image": "data:image/png;base64," + base64.b64encode(png[:40]).decode()}).encode(),
    ]
    for _ in range(count):
        kind = rng.random()
        if kind < 0.55:
            ctype = rng.choice(list(seeds))
            yield ctype, _mutate(rng, seeds[ctype])
        elif kind < 0.62:
            yield rng.choice(crafted)
        elif kind < 0.7:
            yield (
                rng.choice(["image/png", "application/octet-stream"]),
                _png_with_size(rng.choice([1, 3, 70_000, 2**24]), rng.choice([1, 2, 70_000, 2**24])),
            )
        elif kind < 0.8:
            yield "application/json", rng.choice(odd_json)
        elif kind < 0.9:
            shape = tuple(rng.choice([0, 1, 3, 4, 7000, 2**20]) for _ in range(rng.randint(1, 5)))
            header = f"{{'descr': '{rng.choice(['|u1', '<f4', '<u2', '|O'])}', 'fortran_order': False, 'shape': {shape}, }}"
            yield (
                "application/x-npy",
                b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + rng.randbytes(rng.randint(0, 512)),
            )
        else:
            yield (
                rng.choice(["image/png", "application/json", "application/x-npy", "image/webp", "image/tiff"]),
                rng.randbytes(rng.randint(0, 2048)),
            )


def _peak_memory(container) -> int:
    output = container.exec_run(["cat", "/sys/fs/cgroup/memory.peak"]).output.decode().strip()
    if output.isdigit():
        return int(output)
    stats = container.stats(stream=False)["memory_stats"]
    return int(stats.get("max_usage") or stats.get("usage") or 0)


def test_fuzz_decode_paths(server):
    base, container = server
    budget_s, count = 90, 240
    start = time.monotonic()
    failures = []

    def one(case):
        ctype, body = case
        try:
            response = requests.post(base + "/invocations", data=body, headers={"Content-Type": ctype}, timeout=30)
        except requests.RequestException as err:
            return ctype, body[:60], f"no answer: {type(err).__name__}"
        text = response.text
        if not (200 <= response.status_code < 300 or 400 <= response.status_code < 500):
            return ctype, body[:60], f"status {response.status_code}: {text[:200]}"
        if "Traceback" in text or 'File "' in text:
            return ctype, body[:60], f"traceback in body: {text[:200]}"
        return None

    cases = list(_fuzz_cases(seed=12, count=count))
    with ThreadPoolExecutor(4) as pool:
        for offset in range(0, len(cases), 20):
            failures += [f for f in pool.map(one, cases[offset : offset + 20]) if f]
            assert requests.get(base + "/ping", timeout=10).status_code == 200, failures
            if time.monotonic() - start > budget_s:
                break
    assert failures == []
    assert _peak_memory(container) < 3 * 1024**3
    response = post(base, png_bytes(RED), "image/png")
    assert response.status_code == 200 and response.json()["predicted_label"]


# --- fuzz over a user model's tensor payloads (.npy, .npz members, CSV, JSON) ----------------

IDENTITY_MODEL = "import torch\n\ndef model_fn(model_dir):\n    return torch.nn.Identity()\n"


@pytest.fixture(scope="module")
def tensor_server(image, docker_client, tmp_path_factory):
    """A user's model with only a model_fn: requests take the default tensor input path."""
    handle = Containers(docker_client)
    try:
        root = script_model_root(tmp_path_factory.mktemp("tensors"), IDENTITY_MODEL)
        container, base = start_server(handle, image, root, mem_limit="3g")
        wait_ping(base, container)
        yield base, container
    finally:
        handle.cleanup()


def _npz(arrays: dict, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    return bombs.npz({f"{name}.npy": npy_bytes(array) for name, array in arrays.items()}, compression)


def _tensor_cases(seed: int, count: int):
    rng = random.Random(seed)
    numbers = np.random.default_rng(seed).random((8, 5)).astype(np.float32)
    seeds = {
        "application/x-npz": _npz({"x": numbers}),
        "application/x-npy": npy_bytes(numbers),
        "text/csv": "\n".join(",".join(f"{v:.3f}" for v in row) for row in numbers).encode(),
        "application/json": json.dumps(numbers.tolist()).encode(),
    }
    crafted = [
        ("application/x-npz", bombs.bzip2_npz_bomb(64 << 20)),
        ("application/x-npz", bombs.npz({"x.npy": npy_bytes(numbers)}, zipfile.ZIP_LZMA)),
        ("application/x-npz", bombs.deflate_npz_overrun(16, 32 << 20)),
        ("application/x-npz", _npz({"a": numbers, "b": numbers})),
        ("application/x-npz", _npz({"x": np.zeros((0, 3), np.float32)})),
        ("application/x-npz", bombs.npz({"x.npy": bombs.npy_header((2**40,))})),
        ("application/x-npz", bombs.npz({"x.npy": bombs.npy_header((4,), "|O") + b"\x80" * 32})),
        ("text/csv", b"1,2\n3\n"),
        ("text/csv", ("1," * 400_000 + "1\n").encode()),
        ("text/csv", b"nan,inf,-1e999\n1e999,2,3\n"),
        ("text/csv", "\u00b2,\u0663\n".encode()),
        ("application/json", b"[" * 20_000 + b"]" * 20_000),
        ("application/json", b"[[1, 2], [3]]"),
    ]
    for _ in range(count):
        kind = rng.random()
        if kind < 0.6:
            ctype = rng.choice(list(seeds))
            yield ctype, _mutate(rng, seeds[ctype])
        elif kind < 0.85:
            yield rng.choice(crafted)
        else:
            yield rng.choice(list(seeds)), rng.randbytes(rng.randint(0, 2048))


def test_fuzz_tensor_payloads(tensor_server):
    base, container = tensor_server
    failures = []

    def one(case):
        ctype, body = case
        try:
            response = requests.post(base + "/invocations", data=body, headers={"Content-Type": ctype}, timeout=30)
        except requests.RequestException as err:
            return ctype, body[:60], f"no answer: {type(err).__name__}"
        if not (200 <= response.status_code < 300 or 400 <= response.status_code < 500):
            return ctype, body[:60], f"status {response.status_code}: {response.text[:200]}"
        if "Traceback" in response.text or 'File "' in response.text:
            return ctype, body[:60], f"traceback in body: {response.text[:200]}"
        return None

    cases = list(_tensor_cases(seed=22, count=160))
    with ThreadPoolExecutor(4) as pool:
        for offset in range(0, len(cases), 20):
            failures += [f for f in pool.map(one, cases[offset : offset + 20]) if f]
            assert requests.get(base + "/ping", timeout=10).status_code == 200, failures
    assert failures == []
    assert _peak_memory(container) < 2 * 1024**3
    assert requests.post(base + "/invocations", json=[[1, 2]], timeout=30).json() == [[1.0, 2.0]]


# --- 3, 11: the micro-batcher and back-pressure ---------------------------------------------


def frames(count: int) -> bytes:
    return npy_bytes(np.random.default_rng(0).integers(0, 255, (count, 64, 64, 3), dtype=np.uint8))


def test_batcher_survives_timeouts(containers, image, model_store, tmp_path):
    """Concurrent big requests time out (1 s) while their joint forward runs: the old
    batcher died on the first cancelled future and every later request was a 504."""
    root = model_root(tmp_path, model_store, "r50")
    env = {
        "SM_VISION_BATCHING": "on",
        "SM_VISION_MAX_BATCH_SIZE": "512",
        "SM_VISION_MAX_BATCH_ITEMS": "256",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "1",
    }
    container, base = start_server(containers, image, root, env=env)
    wait_ping(base, container)
    # 1,536 rows: ONNX Runtime int8 forwards 6 x 64 of these 64 px frames in 0.75 s on 2
    # cores, inside the timeout; 4x as many outlast it on every engine.
    body = frames(256)
    with ThreadPoolExecutor(6) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: post(base, body, "application/x-npy"), range(6))]
    assert 504 in statuses, statuses
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if post(base, png_bytes(RED), "image/png").status_code == 200:
            break
        time.sleep(1)
    else:
        raise AssertionError("the endpoint never answered again after the timeouts:\n" + container.logs().decode(errors="replace")[-3000:])
    assert requests.get(base + "/ping", timeout=5).status_code == 200


def test_back_pressure_and_batch_transform_records(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store, "r50")
    env = {"SM_VISION_MAX_PENDING": "2", "SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_BATCH": "true"}
    container, base = start_server(containers, image, root, env=env)
    wait_ping(base, container)
    body = frames(64)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: post(base, body, "application/x-npy"), range(8)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers.get("Retry-After") == "1" and "SM_VISION_MAX_PENDING" in refused.json()["error"]
    # What /execution-parameters advertises is what is accepted: 65 small records in one
    # MULTI_RECORD request (64 was the old per-request cap) are all answered.
    params = requests.get(base + "/execution-parameters", timeout=5).json()
    record = json.dumps({"image": base64.b64encode(png_bytes(Image.new("RGB", (16, 16), (10, 200, 30)))).decode()})
    lines = ("\n".join([record] * 65) + "\n").encode()
    assert params["BatchStrategy"] == "MULTI_RECORD" and len(lines) < params["MaxPayloadInMB"] * 1024 * 1024
    response = post(base, lines, "application/jsonlines")
    assert response.status_code == 200, response.text
    assert len(response.text.splitlines()) == 65


# --- 7, 16: multi-model names and archives ------------------------------------------------


def test_mme_names_and_archive_extraction(containers, image, model_store, tmp_path):
    root = tmp_path / "opt_ml"
    model = root / "models" / "m" / "model"
    model.mkdir(parents=True)
    with tarfile.open(model / "model.tar.gz", "w:gz") as tar:
        for path in (model_store / "r18").iterdir():
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mode, info.uid, info.gid = 0o6755, 4242, 4242  # setuid/setgid, a foreign owner
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    for folder in (root, root / "models", root / "models" / "m", model):
        folder.chmod(0o777)
    container, base = start_server(containers, image, root, env={"SAGEMAKER_MULTI_MODEL": "true"})
    wait_ping(base, container)
    url = "/opt/ml/models/m/model"
    for name in ("../../../tmp/escaped", "/tmp/abs", "a/b", ".."):
        response = requests.post(base + "/models", json={"model_name": name, "url": url}, timeout=60)
        assert response.status_code == 400 and "not valid" in response.json()["error"], (name, response.text)
    assert container.exec_run(["test", "-e", "/tmp/escaped"]).exit_code != 0
    response = requests.post(base + "/models", json={"model_name": "good-1", "url": url}, timeout=120)
    assert response.status_code == 200, response.text
    listing = container.exec_run(["sh", "-c", "stat -c '%a %u %n' /tmp/sm-vision-models/good-1/*"]).output.decode()
    modes = [line.split() for line in listing.splitlines()]
    assert modes and all(int(mode, 8) & (stat.S_ISUID | stat.S_ISGID) == 0 and uid != "4242" for mode, uid, _ in modes), listing
    assert (
        requests.post(base + "/models/good-1/invoke", data=png_bytes(RED), headers={"Content-Type": "image/png"}, timeout=30).status_code
        == 200
    )
