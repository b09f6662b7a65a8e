"""OpenAI-compatible /v1/embeddings and /v1/models."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Request
from starlette.types import Scope
from tandem.server.deps import ServiceDep, SettingsDep, require_key
from tandem.server.errors import ModelNotFound, error_responses
from tandem.server.http import open_connections, requests_in_flight
from tandem.server.routes.responses import FastJSON
from tandem.server.schemas import EmbeddingsRequest, EmbeddingsResponse, ModelList
from tandem.server.search import SearchService
from tandem.server.settings import ServerSettings

router = APIRouter(dependencies=[Depends(require_key)], responses=error_responses(401, 503))


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses=error_responses(400, 404, 413, 422, 429),
)
async def embeddings(
    body: EmbeddingsRequest, request: Request, service: ServiceDep, settings: SettingsDep
) -> FastJSON:
    return await answer_embeddings(body, service, settings, request.scope)


async def answer_embeddings(
    body: EmbeddingsRequest, service: SearchService, settings: ServerSettings, scope: Scope
) -> FastJSON:
    """``POST /v1/embeddings``'s answer, from this route or from the hot path (``routes.hot``)."""
    served = settings.served_model_name or service.encoder.name
    if body.model is not None and body.model not in (served, service.encoder.name):
        raise ModelNotFound(f"model {body.model!r} is not served here; this server has {served!r}")
    texts = [body.input] if isinstance(body.input, str) else body.input
    result = await service.embed(
        texts,
        body.dimensions,
        in_flight=requests_in_flight(scope),
        connections=open_connections(scope),
    )
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.n_tokens, "total_tokens": result.n_tokens}
    return FastJSON({"object": "list", "data": data, "model": served, "usage": usage})


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request, service: ServiceDep, settings: SettingsDep) -> ModelList:
    served = settings.served_model_name or service.encoder.name
    created = int(request.app.state.started_at)
    return ModelList.model_validate({"data": [{"id": served, "created": created}]})


def _encode(vector: npt.NDArray[np.float32], encoding_format: str) -> npt.NDArray[Any] | str:
    if encoding_format == "base64":
        # OpenAI's format: little-endian float32 bytes, base64.
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
    return vector  # orjson writes float32 arrays as JSON numbers
