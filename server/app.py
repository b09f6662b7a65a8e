"""The FastAPI app: lifespan, middleware, error handlers and the routers.

Routes (``tandem.server.routes``) talk only to the ``SearchService`` (and
``Reloader``) through the dependencies in ``tandem.server.deps``; they never
touch onnxruntime or FAISS. Loading happens in the lifespan, before uvicorn
accepts connections, so a worker that cannot load exits with a startup
failure instead of serving errors.

``create_app_from_env`` is the uvicorn factory: every worker builds its
settings from the TANDEM_* environment the CLI prepared.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from tandem.server.console import mount_console
from tandem.server.errors import install_error_handlers
from tandem.server.hotswap import Reloader
from tandem.server.metrics import Metrics
from tandem.server.middleware import BodyLimitAndDisconnect, RequestMetrics
from tandem.server.routes import ROUTERS
from tandem.server.routes.hot import HotRoutes
from tandem.server.search import SearchService
from tandem.server.settings import ServerSettings
from tandem.server.state import StartupCheckError

logger = logging.getLogger(__name__)


def create_app_from_env() -> FastAPI:
    """uvicorn factory: settings from TANDEM_* variables."""
    return create_app(ServerSettings())  # type: ignore[call-arg]  # required fields come from env


def create_app(settings: ServerSettings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("settings: %s", json.dumps(settings.redacted(), sort_keys=True))
        try:
            service = await asyncio.to_thread(SearchService.load, settings, metrics)
        except StartupCheckError as exc:
            logger.error("cannot start: %s", exc)
            raise
        await service.start()
        reloader = Reloader(service, settings, metrics)
        reloader.start()
        app.state.service = service
        app.state.reloader = reloader
        # Everything loaded so far lives as long as the process: keep it out of
        # the collector's generations, so full collections under load stay short.
        gc.collect()
        gc.freeze()
        logger.info("ready: bundle %s, %d docs", service.loaded.version, service.loaded.n_docs)
        try:
            yield
        finally:
            service.draining = True
            await reloader.stop()
            await service.stop()
            metrics.mark_dead()

    open_docs = settings.api_key is None  # with a key, nothing but probes and /metrics is open
    app = FastAPI(
        title="tandem",
        summary="Teacher-indexed, student-queried retrieval",
        lifespan=lifespan,
        docs_url="/docs" if open_docs else None,
        redoc_url="/redoc" if open_docs else None,
        openapi_url="/openapi.json" if open_docs else None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    if settings.hot_routes:  # innermost: behind the metrics, the body limit and the watch
        app.add_middleware(HotRoutes)
    app.add_middleware(BodyLimitAndDisconnect, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    for router in ROUTERS:
        app.include_router(router)
    if settings.console:
        mount_console(app)
    return app
