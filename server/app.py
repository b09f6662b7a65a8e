"""The FastAPI app: routes, auth, probes, lifespan.

Routes talk only to the ``SearchService`` (and ``Reloader``) and the request
and response schemas; they never touch onnxruntime or FAISS. Loading happens
in the lifespan, before uvicorn accepts connections, so a worker that cannot
load exits with a startup failure instead of serving errors.

``create_app_from_env`` is the uvicorn factory: every worker builds its
settings from the TANDEM_* environment the CLI prepared.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from tandem.server.console import mount_console
from tandem.server.errors import (
    AdminDisabled,
    ModelNotFound,
    NotReady,
    Unauthorized,
    error_responses,
    install_error_handlers,
)
from tandem.server.hotswap import Reloader
from tandem.server.info import describe
from tandem.server.metrics import Metrics
from tandem.server.middleware import BodyLimitAndDisconnect, RequestMetrics
from tandem.server.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelEntry,
    ModelList,
    ReloadResponse,
    SearchRequest,
    SearchResponse,
    Timings,
    Usage,
)
from tandem.server.search import SearchService
from tandem.server.settings import ServerSettings
from tandem.server.state import StartupCheckError

logger = logging.getLogger(__name__)


def create_app_from_env() -> FastAPI:
    """uvicorn factory: settings from TANDEM_* variables."""
    return create_app(ServerSettings())  # type: ignore[call-arg]  # required fields come from env


def create_app(settings: ServerSettings) -> FastAPI:
    metrics = Metrics()
    started_at = int(time.time())

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
    install_error_handlers(app)
    app.add_middleware(BodyLimitAndDisconnect, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)

    def service_of(request: Request) -> SearchService:
        service: SearchService | None = getattr(request.app.state, "service", None)
        if service is None or service.draining:
            raise NotReady("the service is not loaded")
        return service

    def reloader_of(request: Request) -> Reloader:
        reloader: Reloader | None = getattr(request.app.state, "reloader", None)
        if reloader is None:
            raise NotReady("the service is not loaded")
        return reloader

    key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    # async dependencies: a plain `def` would cost every request a thread-pool hop.
    async def require_key(request: Request) -> None:
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the key matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
            raise Unauthorized()

    async def require_admin(request: Request) -> None:
        if key is None:
            raise AdminDisabled("admin routes are disabled: set an API key (TANDEM_API_KEY)")
        await require_key(request)

    # -- probes and metrics: never behind the key --------------------------
    probes = APIRouter(tags=["probes"])

    @probes.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the event loop answers. Says nothing about models."""
        return {"status": "alive"}

    @probes.get("/readyz", responses=error_responses(503))
    async def readyz(request: Request) -> dict[str, str]:
        service = service_of(request)
        if not await service.check_ready():
            raise NotReady(f"encoder unhealthy: {service.batcher.last_error}")
        return {"status": "ready", "version": service.loaded.version}

    @probes.get("/metrics", response_class=PlainTextResponse)
    async def metrics_route() -> Response:
        body, content_type = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=content_type)

    # -- the API -------------------------------------------------------------
    api = APIRouter(dependencies=[Depends(require_key)], responses=error_responses(401, 503))
    searching = error_responses(400, 413, 422, 429)

    @api.post(
        "/search",
        response_model=SearchResponse,
        response_model_exclude_none=True,
        responses=searching,
    )
    async def search(body: SearchRequest, request: Request, response: Response) -> SearchResponse:
        (result,) = await service_of(request).search([body.query], body)
        _timing_headers(response, result.timings_ms)
        return result

    @api.post(
        "/search/batch",
        response_model=BatchSearchResponse,
        response_model_exclude_none=True,
        responses=searching,
    )
    async def search_batch(
        body: BatchSearchRequest, request: Request, response: Response
    ) -> BatchSearchResponse:
        results = await service_of(request).search(body.queries, body)
        _timing_headers(response, results[0].timings_ms)
        return BatchSearchResponse(results=results)

    @api.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        responses=searching | error_responses(404),
    )
    async def embeddings(body: EmbeddingsRequest, request: Request) -> EmbeddingsResponse:
        service = service_of(request)
        served = settings.served_model_name or service.encoder.name
        if body.model is not None and body.model not in (served, service.encoder.name):
            raise ModelNotFound(
                f"model {body.model!r} is not served here; this server has {served!r}"
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors, tokens = await service.embed(texts, body.dimensions)
        data = [
            EmbeddingData(index=i, embedding=_encode(v, body.encoding_format))
            for i, v in enumerate(vectors)
        ]
        return EmbeddingsResponse(
            data=data, model=served, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
        )

    @api.get("/v1/models", response_model=ModelList)
    async def models(request: Request) -> ModelList:
        service = service_of(request)
        served = settings.served_model_name or service.encoder.name
        return ModelList(data=[ModelEntry(id=served, created=started_at)])

    @api.get("/info")
    async def info(request: Request) -> dict[str, Any]:
        data = describe(service_of(request))
        data["reload"] = reloader_of(request).info()
        data["settings"] = settings.redacted()
        return data

    admin = APIRouter(
        prefix="/admin",
        dependencies=[Depends(require_admin)],
        tags=["admin"],
        responses=error_responses(401, 403, 409, 422, 503),
    )

    @admin.post(
        "/reload",
        response_model=ReloadResponse,
        response_model_exclude_none=True,
        responses={202: {"model": ReloadResponse, "description": "reload started"}},
    )
    async def reload(
        request: Request,
        wait: bool = Query(False, description="answer once the reload is done"),
        force: bool = Query(False, description="reload even if `current` has not moved"),
    ) -> Any:
        reloader = reloader_of(request)
        reloader.broadcast()
        if not wait:
            reloader.reload_in_background(force)
            return JSONResponse({"status": "accepted"}, status_code=202)
        outcome = await reloader.reload(force)
        return ReloadResponse(
            status=outcome.status,
            version=outcome.version,
            previous_version=outcome.previous_version,
            seconds=round(outcome.seconds, 4),
        )

    app.include_router(probes)
    app.include_router(api)
    app.include_router(admin)
    if settings.console:
        mount_console(app)
    return app


def _timing_headers(response: Response, timings: Timings) -> None:
    response.headers["x-queue-time"] = f"{timings.queue:.3f}"
    response.headers["x-tokenize-time"] = f"{timings.tokenize:.3f}"
    response.headers["x-embed-time"] = f"{timings.embed:.3f}"
    response.headers["x-search-time"] = f"{timings.search:.3f}"
    response.headers["x-rescore-time"] = f"{timings.rescore:.3f}"
    response.headers["x-total-time"] = f"{timings.total:.3f}"


def _encode(vector: np.ndarray[Any, Any], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's format: little-endian float32 bytes, base64.
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]
