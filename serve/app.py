"""The ASGI app: hosting (serve.hosting) + routes and their error mapping
(serve.routes) + middleware (serve.middleware).

create_app(settings) builds everything; nothing happens at import. The model loads
(and warms up) in a background thread at start-up so /ping can say "loading" (503),
"ready" (200) or "failed" (500) immediately, whatever the model is doing.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from starlette.applications import Starlette

from serve import metrics as server_metrics
from serve.hosting import Pools, Settings, SingleModel, create_hosting
from serve.middleware import middleware
from serve.routes import EXCEPTION_HANDLERS, routes

__all__ = ["Pools", "Settings", "create_app"]

log = logging.getLogger("serve")


def create_app(settings: Settings) -> Starlette:
    metrics = server_metrics.ServerMetrics.from_env(settings.metrics)
    pools = Pools(settings, metrics)
    hosting = create_hosting(settings, pools)
    metrics.watch(server_metrics.HostCollector(hosting, pools, settings.device))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if isinstance(hosting, SingleModel):
            threading.Thread(target=hosting.load, name="model-loader", daemon=True).start()
        log.info(
            "serving on device %s with %d inference workers%s%s%s",
            settings.device,
            settings.workers,
            f", micro-batching (up to {settings.max_batch_size} rows, {settings.max_delay_ms:g} ms)" if settings.batching else "",
            ", multi-model" if settings.multi_model else "",
            ", batch transform (see /execution-parameters)" if settings.batch_mode else "",
        )
        yield
        log.info("shutting down: in-flight requests finished")
        pools.close()
        for model in hosting.loaded():
            model.close()

    app = Starlette(
        routes=routes(settings, hosting, metrics),
        middleware=middleware(metrics, settings.access_log),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.models = hosting
    return app
