"""/admin: bundle reloads; exists only behind an API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from tandem.server.deps import ReloaderDep, require_admin
from tandem.server.errors import error_responses
from tandem.server.schemas import ReloadResponse

router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(require_admin)],
    tags=["admin"],
    responses=error_responses(401, 403, 409, 422, 503),
)


@router.post(
    "/reload",
    response_model=ReloadResponse,
    response_model_exclude_none=True,
    responses={202: {"model": ReloadResponse, "description": "reload started"}},
)
async def reload(
    reloader: ReloaderDep,
    wait: bool = Query(False, description="answer once the reload is done"),
    force: bool = Query(False, description="reload even if `current` has not moved"),
) -> Any:
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
