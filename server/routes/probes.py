"""Probes and metrics: never behind the API key."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from tandem.server.deps import MetricsDep, ServiceDep
from tandem.server.errors import NotReady, error_responses

router = APIRouter(tags=["probes"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the event loop answers. Says nothing about models."""
    return {"status": "alive"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(service: ServiceDep) -> dict[str, str]:
    if not await service.check_ready():
        raise NotReady(f"encoder unhealthy: {service.batcher.last_error}")
    return {"status": "ready", "version": service.loaded.version}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics_route(metrics: MetricsDep) -> Response:
    body, content_type = await asyncio.to_thread(metrics.render)
    return Response(body, media_type=content_type)
