"""/info: what this worker serves and how, without a shell."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from tandem.server.deps import ReloaderDep, ServiceDep, SettingsDep, require_key
from tandem.server.errors import error_responses
from tandem.server.info import describe

router = APIRouter(dependencies=[Depends(require_key)], responses=error_responses(401, 503))


@router.get("/info")
async def info(service: ServiceDep, reloader: ReloaderDep, settings: SettingsDep) -> dict[str, Any]:
    data = describe(service)
    data["reload"] = reloader.info()
    data["settings"] = settings.redacted()
    return data
