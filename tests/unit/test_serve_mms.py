"""The MMS backend's adapter (serve/mms.py) in-process, with MMS's Context faked: a
worker reads the same ServeConfig from the environment, prepares the model the same way
(extraction cap, the SDK's submit directory) and answers through the same
HostedModel.invoke and error mapping as the default server."""

from __future__ import annotations

import base64
import json
import logging
import tarfile

import pytest
import torch

from container import ConfigError, ServeConfig
from serve import mms
from tests.support.payloads import png_bytes


class FakeContext:
    """The parts of MMS's Context the adapter uses."""

    def __init__(self, model_dir, headers: dict | None = None):
        self.model_name = "model"
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.headers = headers or {}
        self.status: tuple[int, str] | None = None
        self.content_type: str | None = None
        self.response_headers: dict[str, str] = {}

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers

    def get_request_id(self, idx: int = 0) -> str:
        return "mms-request-1"

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.response_headers[key] = value

    def set_response_status(self, code: int, phrase: str) -> None:
        self.status = (code, phrase)

    def set_response_content_type(self, idx: int, content_type: str) -> None:
        self.content_type = content_type


@pytest.fixture
def environ(monkeypatch, tmp_path):
    """The environment `serve --backend mms` exports to its workers: one worker, scratch under tmp_path."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    monkeypatch.setenv("SM_VISION_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("SM_VISION_OPT_ML", str(tmp_path / "opt_ml"))
    yield monkeypatch
    torch.set_num_threads(threads)


@pytest.fixture
def worker():
    started = []

    def start(model_dir) -> mms.Worker:
        started.append(mms.Worker(FakeContext(model_dir)))
        return started[-1]

    yield start
    for one in started:
        one.close()


def ask(worker: mms.Worker, body: bytes, content_type: str, **headers) -> tuple[FakeContext, object]:
    context = FakeContext(worker.model.model_dir, {"Content-Type": content_type, **headers})
    (out,) = worker.answer({"body": body}, context)
    return context, json.loads(out)


def test_the_model_extract_cap_holds(environ, worker, model_dir, tmp_path):
    packed = tmp_path / "packed"
    packed.mkdir()
    with tarfile.open(packed / "model.tar.gz", "w:gz") as tar:
        for path in model_dir.iterdir():  # resnet18: ~45 MB expanded
            tar.add(path, arcname=path.name)
    environ.setenv("SM_VISION_MAX_MODEL_EXTRACT_MB", "1")
    with pytest.raises(ConfigError, match=r"expands past 1 MiB \(SM_VISION_MAX_MODEL_EXTRACT_MB\)"):
        worker(packed)
    environ.setenv("SM_VISION_MAX_MODEL_EXTRACT_MB", "100")
    context, answer = ask(worker(packed), png_bytes(), "image/png")
    assert context.status is None and answer["predicted_label"] in ("a", "b", "c")


def test_the_script_is_found_in_the_sdk_submit_directory(environ, worker, model_dir, tmp_path):
    submitted = tmp_path / "submitted"
    submitted.mkdir()
    (submitted / "serve_me.py").write_text(
        "import json\ndef transform_fn(model, body, content_type, accept):\n    return json.dumps({'hooked': len(body)}), accept\n"
    )
    environ.setenv("SAGEMAKER_SUBMIT_DIRECTORY", f"file://{submitted}")
    environ.setenv("SAGEMAKER_PROGRAM", "serve_me.py")
    _, answer = ask(worker(model_dir), b"abc", "application/json")
    assert answer == {"hooked": 3}


def test_answers_and_errors_are_the_servers(environ, worker, model_dir):
    environ.setenv("SM_VISION_MAX_BATCH_ITEMS", "2")
    served = worker(model_dir)
    context, answer = ask(served, png_bytes(), "image/png", **{"X-Top-K": "2"})
    assert context.content_type == "application/json" and len(answer["top_k"]) == 2
    item = base64.b64encode(png_bytes()).decode()
    context, answer = ask(served, json.dumps([item] * 3).encode(), "application/json")
    assert context.status == (422, "batch of 3 inputs; send 1 to 2") and answer == {"error": "batch of 3 inputs; send 1 to 2"}
    context, answer = ask(served, b"x", "text/csv")
    assert context.status[0] == 415 and set(answer) == {"error"}


def test_batch_transform_records_run_a_chunk_at_a_time(environ, worker, model_dir):
    environ.setenv("SM_VISION_MAX_BATCH_ITEMS", "2")
    environ.setenv("SAGEMAKER_BATCH", "true")
    record = json.dumps({"image": base64.b64encode(png_bytes(size=(8, 8))).decode()})
    served = worker(model_dir)
    context = FakeContext(model_dir, {"Content-Type": "application/jsonlines"})
    (out,) = served.answer({"body": ("\n".join([record] * 5) + "\n").encode()}, context)
    assert context.status is None and len(out.decode().splitlines()) == 5


def test_mms_is_configured_from_serve_config_alone():
    """The inference API where our server would listen; the management API (which loads
    models from any URL) on the loopback only, on a port MMS accepts (below 32767)."""
    config = ServeConfig(host="127.0.0.1", port=9090, timeout_s=30, max_payload_mb=2, workers=3)
    lines = dict(line.split("=", 1) for line in mms.properties(config, mms._free_local_port(config.port)).splitlines())
    assert lines["inference_address"] == "http://127.0.0.1:9090"
    management = lines["management_address"]
    assert management.startswith("http://127.0.0.1:") and 9090 < int(management.rsplit(":", 1)[1]) < mms.MMS_MAX_PORT
    assert (lines["default_response_timeout"], lines["max_request_size"], lines["default_workers_per_model"]) == ("30", str(2 << 20), "3")
    assert lines["default_service_handler"] == "serve.mms:handle" and lines["decode_input_request"] == "false"
    assert mms.properties(ServeConfig(host="::"), 8081).startswith("inference_address=http://[::]:8080\n")


def test_multi_model_endpoints_are_refused_before_mms_starts(tmp_path):
    with pytest.raises(ConfigError, match="SAGEMAKER_MULTI_MODEL=true cannot be served by the MMS backend"):
        mms.start(ServeConfig(multi_model=True, scratch_dir=str(tmp_path)))
    assert not (tmp_path / "mms.properties").exists()


def test_worker_logs_escape_client_text(environ, worker, model_dir, capsys):
    """MMS's workers log through their own handler: the adapter escapes it too."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        worker(model_dir)
        logging.getLogger("user").warning("from the client: %s", "\x1b[2Jgone\nforged line")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "from the client: \\x1b[2Jgone\\nforged line" in capsys.readouterr().err
