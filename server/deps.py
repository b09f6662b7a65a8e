"""What routes depend on, as ``Annotated`` aliases (FastAPI full-stack template style).

A route asks for ``ServiceDep`` or ``ReloaderDep`` and gets the object the
lifespan put on ``app.state``, or a 503 while it is not loaded; the API key
checks are dependencies of the routers that need them.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import State
from tandem.server.errors import AdminDisabled, NotReady, Unauthorized
from tandem.server.hotswap import Reloader
from tandem.server.metrics import Metrics
from tandem.server.search import SearchService
from tandem.server.settings import ServerSettings


# async dependencies: a plain `def` would cost every request a thread-pool hop.
async def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_service(request: Request) -> SearchService:
    return loaded_service(request.app.state)


def loaded_service(state: State) -> SearchService:
    """The service the lifespan loaded, or ``NotReady`` while it is not loaded or draining."""
    service: SearchService | None = getattr(state, "service", None)
    if service is None or service.draining:
        raise NotReady("the service is not loaded")
    return service


async def get_reloader(request: Request) -> Reloader:
    reloader: Reloader | None = getattr(request.app.state, "reloader", None)
    if reloader is None:
        raise NotReady("the service is not loaded")
    return reloader


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServiceDep = Annotated[SearchService, Depends(get_service)]
ReloaderDep = Annotated[Reloader, Depends(get_reloader)]


async def require_key(request: Request, settings: SettingsDep) -> None:
    """With an API key configured, every API route needs ``Authorization: Bearer <key>``."""
    check_key(settings, request.headers.get("authorization", ""))


def check_key(settings: ServerSettings, authorization: str) -> None:
    """``Unauthorized`` unless no key is configured or ``authorization`` is its bearer token."""
    if settings.api_key is None:
        return
    key = settings.api_key.get_secret_value().encode()
    scheme, _, token = authorization.partition(" ")
    # compare_digest: the time taken does not reveal how much of the key matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
        raise Unauthorized("missing or invalid API key")


async def require_admin(request: Request, settings: SettingsDep) -> None:
    if settings.api_key is None:
        raise AdminDisabled("admin routes are disabled: set an API key (TANDEM_API_KEY)")
    await require_key(request, settings)
