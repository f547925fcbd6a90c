"""The opt-in MMS backend: multi-model-server (as AWS's images run it, with their
logging), answering through the same path as the default server: the same
ServeConfig, resolved the same way, the same HostedModel (extraction limits, script
lookup, warm-up) and its `invoke`, the same error replies.

`serve --backend mms` calls start(), which writes MMS's configuration from ServeConfig
(properties()) and runs it; MMS imports this module in each worker and calls
handle(data, context): None data once to load, then batches of one request. A worker
answers one request at a time; its settings come from the environment start() exported.

MMS owns the HTTP layer under this backend: its /ping, its connection handling and its
own access log. Its inference API listens on SM_VISION_BIND_HOST:SAGEMAKER_BIND_TO_PORT
with SAGEMAKER_MAX_PAYLOAD_IN_MB and SAGEMAKER_MODEL_SERVER_TIMEOUT; its management API
only on 127.0.0.1. Multi-model endpoints are served by the default backend only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from container import ConfigError, ServeConfig, cpu_count
from serve.errors import ServeError, reply

log = logging.getLogger("serve.mms")

MMS_MAX_PORT = 32767  # MMS 1.1.11 parses ports as Java shorts


class Worker:
    """One MMS worker process: its model, its pools and the event loop `invoke` runs on."""

    def __init__(self, context):
        from serve.access_log import escape_every_log
        from serve.hosting import HostedModel
        from serve.machine import probe
        from serve.pools import Pools

        escape_every_log()  # MMS's worker logging, with client text escaped

        config = ServeConfig.from_env()
        processes = config.workers or cpu_count()  # MMS's default: a worker per CPU
        machine = probe(config, processes, gpu=context.system_properties.get("gpu_id"))
        # Each worker extracts its own copy: workers load concurrently.
        scratch = config.scratch_path / f"mms-worker-{os.getpid()}"
        self.config = dataclasses.replace(config.resolve(machine), scratch_dir=str(scratch))
        self.loop = asyncio.new_event_loop()
        model_dir = Path(context.system_properties["model_dir"])
        self.model = HostedModel(context.model_name, model_dir, str(model_dir), self.config, Pools(self.config, machine))

    def close(self) -> None:
        """The batcher, the pools and the loop (MMS ends the process instead; tests call this)."""
        self.model.close()
        self.model.pools.close()
        self.loop.close()

    def answer(self, request: dict, context) -> list:
        """One request through HostedModel.invoke, under the server's deadline."""
        from serve.deadline import Deadline
        from serve.handler import requested_top_k
        from serve.runner import until_done_or_gone

        headers = {key.lower(): value for key, value in context.get_all_request_header(0).items()}
        body = request.get("body")
        if body is None:
            body = request.get("data", b"")
        if not isinstance(body, (bytes, bytearray)):  # MMS decoded it (MMS_DECODE_INPUT_REQUEST unset)
            body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            deadline = Deadline(self.config.timeout_s)
            top_k = requested_top_k(headers.get("x-top-k"))
            call = self.model.call(headers, top_k, context.get_request_id(0), deadline)
            work = until_done_or_gone(self.model.invoke(bytes(body), call), None, deadline)
            out, out_type = self.loop.run_until_complete(work)
        except Exception as err:  # noqa: BLE001 - answered through the one mapping; a bug is logged, not sent
            if not isinstance(err, ServeError):
                log.exception("unhandled error in the model's handler")
            status, payload, _ = reply(err)
            context.set_response_status(status, payload["error"][:200] if isinstance(err, ServeError) else "internal error")
            context.set_response_content_type(0, "application/json")
            return [json.dumps(payload)]
        context.set_response_content_type(0, out_type)
        for name, value in call.context.response_headers.items():  # set by the user's hooks
            context.set_response_header(0, name, value)
        return [out]


_worker: Worker | None = None


def handle(data, context):
    """MMS entry point: load on the first (None) call, then answer one request."""
    global _worker
    if _worker is None:
        _worker = Worker(context)
    if data is None:
        return None
    return _worker.answer(data[0], context)


def properties(config: ServeConfig, management_port: int) -> str:
    """MMS's configuration, written from ServeConfig alone (sagemaker-inference's would
    put the management API on 0.0.0.0 and the serving port). The inference API listens
    where our server would (SM_VISION_BIND_HOST, SAGEMAKER_BIND_TO_PORT); the management
    API, which loads a model from any URL it is given, only on 127.0.0.1, on a port of
    its own that nothing outside the container reaches."""
    settings = {
        "inference_address": f"http://{_url_host(config.host)}:{config.port}",
        "management_address": f"http://127.0.0.1:{management_port}",
        "default_service_handler": f"{__name__}:handle",
        "default_response_timeout": config.timeout_s,
        "max_request_size": config.max_payload_bytes,
        "decode_input_request": "false",  # the handler decodes bodies itself
    }
    if config.workers:
        settings["default_workers_per_model"] = config.workers
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _free_local_port(after: int) -> int:
    """A loopback port nothing listens on, below 32767 (MMS refuses larger ones)."""
    for port in range(after + 1, MMS_MAX_PORT):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ConfigError(f"no free port on 127.0.0.1 between {after + 1} and {MMS_MAX_PORT} for MMS's management API")


def start(config: ServeConfig) -> None:
    """Run multi-model-server on the model (blocks until MMS exits; SIGTERM stops it).

    Multi-model endpoints are refused: SageMaker loads their models through the
    management API on the serving port, and MMS 1.1.11 fetches whatever URL a load
    names (an http(s) archive whose handler then runs here) with no setting to confine
    it. The default backend serves multi-model endpoints, loading only from
    /opt/ml/models."""
    if config.multi_model:
        raise ConfigError(
            "SAGEMAKER_MULTI_MODEL=true cannot be served by the MMS backend: MMS 1.1.11 loads models from any URL "
            "its management API is given; use the default backend (SM_VISION_SERVE_BACKEND=asgi) for multi-model endpoints"
        )
    import psutil
    import sagemaker_inference

    from serve.hooks import install_requirements

    os.environ.update(config.to_env())  # what each worker's ServeConfig.from_env reads back
    install_requirements(config.model_path / "code")  # once, before the workers import the script
    mms_config = config.scratch_path / "mms.properties"
    mms_config.parent.mkdir(parents=True, exist_ok=True)
    mms_config.write_text(properties(config, _free_local_port(config.port)))
    command = [
        "multi-model-server",
        "--start",
        "--foreground",
        "--mms-config",
        str(mms_config),
        "--log-config",
        str(Path(sagemaker_inference.__file__).parent / "etc" / "log4j2.xml"),  # AWS's images' logging
        "--model-store",
        "/",  # --models names an absolute path
        "--models",
        f"model={config.model_path}",
    ]
    log.info("starting multi-model-server: %s", " ".join(command))
    process = subprocess.Popen(command)

    def stop(signum, frame):  # the Java frontend stops its workers and exits; the CLI then returns
        for child in psutil.Process(process.pid).children(recursive=True):
            if "java" in child.name():
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    sys.exit(process.wait())
