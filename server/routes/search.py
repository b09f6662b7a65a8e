"""/search and /search/batch: request bodies to ``SearchOptions``, results to JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.types import Scope
from tandem.server.deps import ServiceDep, require_key
from tandem.server.domain import ALL_FIELDS, HitField, QueryResult, SearchOptions
from tandem.server.errors import error_responses
from tandem.server.http import open_connections, requests_in_flight
from tandem.server.routes.responses import FastJSON
from tandem.server.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    SearchRequest,
    SearchResponse,
)
from tandem.server.schemas import SearchOptions as SearchOptionsBody
from tandem.server.search import SearchService

router = APIRouter(dependencies=[Depends(require_key)], responses=error_responses(401, 503))
SEARCHING = error_responses(400, 413, 422, 429)


@router.post("/search", response_model=SearchResponse, responses=SEARCHING)
async def search(body: SearchRequest, request: Request, service: ServiceDep) -> FastJSON:
    return await answer_search(body, service, request.scope)


@router.post("/search/batch", response_model=BatchSearchResponse, responses=SEARCHING)
async def search_batch(body: BatchSearchRequest, request: Request, service: ServiceDep) -> FastJSON:
    return await answer_batch(body, service, request.scope)


async def answer_search(body: SearchRequest, service: SearchService, scope: Scope) -> FastJSON:
    """``POST /search``'s answer, from this route or from the hot path (``routes.hot``)."""
    (result,) = await service.search(
        [body.query],
        options_of(body),
        in_flight=requests_in_flight(scope),
        connections=open_connections(scope),
    )
    return FastJSON(result_body(result), headers=timing_headers(result))


async def answer_batch(body: BatchSearchRequest, service: SearchService, scope: Scope) -> FastJSON:
    """``POST /search/batch``'s answer, from this route or from the hot path."""
    results = await service.search(
        body.queries,
        options_of(body),
        in_flight=requests_in_flight(scope),
        connections=open_connections(scope),
    )
    return FastJSON(
        {"results": [result_body(r) for r in results]}, headers=timing_headers(results[0])
    )


def options_of(body: SearchOptionsBody) -> SearchOptions:
    fields: frozenset[HitField]
    if body.fields is not None:
        fields = frozenset(body.fields) | {"id", "score"}
    else:
        fields = ALL_FIELDS
        if not body.include_text:
            fields -= {"text"}
        if not body.include_metadata:
            fields -= {"metadata"}
    return SearchOptions(
        k=body.k,
        variant=body.variant,
        rescore=body.rescore,
        oversample=body.oversample,
        filter=body.filter,
        fields=fields,
        mode=body.mode,
    )


def result_body(result: QueryResult) -> dict[str, Any]:
    """``SearchResponse`` as a dict; hits carry only the fields asked for."""
    t = result.timings
    return {
        "results": [_hit(h) for h in result.hits],
        "mode": result.mode,
        **({"weight": result.weight} if result.weight is not None else {}),
        "variant": result.variant,
        "rescored": result.rescored,
        "stages": result.stages,
        "timings_ms": {
            "queue": t.queue_s * 1e3,
            "tokenize": t.tokenize_s * 1e3,
            "embed": t.embed_s * 1e3,
            "search": t.search_s * 1e3,
            "rescore": t.rescore_s * 1e3,
            "fetch": t.fetch_s * 1e3,
            "total": t.total_s * 1e3,
            **({"index": t.index_s * 1e3} if t.index_s is not None else {}),
        },
        "truncated": result.truncated,
    }


def _hit(hit: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": hit.id, "score": hit.score}
    if hit.text is not None:
        out["text"] = hit.text
    if hit.metadata is not None:
        out["metadata"] = hit.metadata
    return out


def timing_headers(result: QueryResult) -> dict[str, str]:
    t = result.timings
    return {
        "x-queue-time": f"{t.queue_s * 1e3:.3f}",
        "x-tokenize-time": f"{t.tokenize_s * 1e3:.3f}",
        "x-embed-time": f"{t.embed_s * 1e3:.3f}",
        "x-search-time": f"{t.search_s * 1e3:.3f}",
        "x-rescore-time": f"{t.rescore_s * 1e3:.3f}",
        "x-fetch-time": f"{t.fetch_s * 1e3:.3f}",
        "x-total-time": f"{t.total_s * 1e3:.3f}",
    }
