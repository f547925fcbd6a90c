"""The opt-in MMS backend: multi-model-server started as AWS's images start it
(sagemaker-inference's model_server), answering through the same path as the default
server: the same ServeConfig, resolved the same way, the same HostedModel (extraction
limits, script lookup, warm-up) and its `invoke`, the same error replies.

`serve --backend mms` calls start(); MMS imports this module in each worker and calls
handle(data, context): None data once to load, then batches of one request. A worker
answers one request at a time; its settings come from the environment start() exported.
sagemaker_inference reads the environment at import, so it is imported only in start().

MMS owns the HTTP layer under this backend: its /ping, its connection handling and its
own access log; the port, SAGEMAKER_MAX_PAYLOAD_IN_MB and SAGEMAKER_MODEL_SERVER_WORKERS
reach it through sagemaker-inference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from pathlib import Path

from container import ServeConfig, cpu_count
from serve.errors import ServeError, reply

log = logging.getLogger("serve.mms")


class Worker:
    """One MMS worker process: its model, its pools and the event loop `invoke` runs on."""

    def __init__(self, context):
        from serve.hosting import HostedModel, Pools
        from serve.machine import probe, share_cores

        config = ServeConfig.from_env()
        processes = config.workers or cpu_count()  # MMS's default: a worker per CPU
        machine = probe(config, processes, gpu=context.system_properties.get("gpu_id"))
        # Each worker extracts its own copy: workers load concurrently.
        scratch = config.scratch_path / f"mms-worker-{os.getpid()}"
        self.config = dataclasses.replace(config.resolve(machine), scratch_dir=str(scratch))
        share_cores(self.config, machine)
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
        from serve.handler import requested_top_k
        from serve.runner import until_done_or_gone

        headers = {key.lower(): value for key, value in context.get_all_request_header(0).items()}
        body = request.get("body")
        if body is None:
            body = request.get("data", b"")
        if not isinstance(body, (bytes, bytearray)):  # MMS decoded it (MMS_DECODE_INPUT_REQUEST unset)
            body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            call = self.model.call(headers, requested_top_k(headers.get("x-top-k")), context.get_request_id(0))
            work = until_done_or_gone(self.model.invoke(bytes(body), call), None, self.config.timeout_s)
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


def start(config: ServeConfig) -> None:
    """Hand the process to sagemaker-inference's model server (blocks until MMS exits)."""
    os.environ.update(config.to_env())  # what each worker's ServeConfig.from_env reads back
    os.environ.setdefault("SAGEMAKER_BASE_DIR", str(config.paths.root))
    os.environ["MMS_DECODE_INPUT_REQUEST"] = "false"  # the handler decodes bodies itself
    from sagemaker_inference import model_server

    model_server.start_model_server(handler_service=__name__ + ":handle")
