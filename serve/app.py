"""The ASGI app: hosting (serve.hosting) + routes (serve.routes) + middleware, the
error replies among them (serve.middleware).

create_app(config, machine) builds everything from the resolved ServeConfig
(ServeConfig.resolve); nothing happens at import. The model loads (and warms up) in a
background thread at start-up so /ping can say "loading" (503), "ready" (200) or
"failed" (500) immediately, whatever the model is doing.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from starlette.applications import Starlette

from container import ServeConfig
from container.serving import Machine
from serve import metrics as server_metrics
from serve.hosting import SingleModel, create_hosting
from serve.middleware import middleware
from serve.pools import Pools
from serve.routes import EXCEPTION_HANDLERS, routes

__all__ = ["Pools", "create_app"]

log = logging.getLogger("serve")


def create_app(config: ServeConfig, machine: Machine) -> Starlette:
    """`config` resolved against `machine` (config.resolve(machine))."""
    metrics = server_metrics.ServerMetrics.from_env(config.metrics)
    pools = Pools(config, machine, metrics)
    hosting = create_hosting(config, pools)
    metrics.watch(server_metrics.HostCollector(hosting, pools, config.device))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if isinstance(hosting, SingleModel):
            threading.Thread(target=hosting.load, name="model-loader", daemon=True).start()
        threading.Thread(target=pools.images.start, name="decode-pool", daemon=True).start()
        log.info(
            "serving on device %s with %d inference workers%s%s%s",
            config.device,
            config.workers,
            f", micro-batching (up to {config.max_batch_size} rows, {config.max_batch_delay_ms:g} ms)" if config.micro_batching else "",
            ", multi-model" if config.multi_model else "",
            ", batch transform (see /execution-parameters)" if config.batch else "",
        )
        yield
        log.info("shutting down: in-flight requests finished")
        pools.close()
        for model in hosting.loaded():
            model.close()

    app = Starlette(
        routes=routes(config, hosting, metrics),
        middleware=middleware(metrics, config.access_log),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.models = hosting
    return app
