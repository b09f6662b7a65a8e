"""Routing, auth, limits and error bodies through an in-process ASGI client.

Two apps share the session bundle: ``api`` has an API key and small limits;
``open_app`` has no key (so /admin is disabled), refuses over-long queries
instead of truncating them, and a deadline too short for any search.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tandem.models.encoder import Encoder
from tandem.server.app import create_app
from tandem.server.settings import ServerSettings

from tests.support.server import API_KEY, QUERIES

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def _client(settings: ServerSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tandem") as client:
            yield client


@pytest.fixture(scope="module")
async def api(bundle_root: Path, query_encoder_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = ServerSettings(
        bundle=bundle_root,
        student=str(query_encoder_dir),
        api_key=API_KEY,
        max_k=50,
        max_batch_queries=4,
        max_input_chars=3000,
        max_body_bytes=64 * 1024,
        faiss_device="cpu",
    )
    async for client in _client(settings):
        yield client


@pytest.fixture(scope="module")
async def open_app(bundle_root: Path, query_encoder_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = ServerSettings(
        bundle=bundle_root,
        student=str(query_encoder_dir),
        truncate=False,
        max_input_chars=2000,
        request_timeout_s=1e-6,
        variant=["bin-768", "f32-768"],
    )
    async for client in _client(settings):
        yield client


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "type"} and body["type"] == error_type, body
    assert isinstance(body["error"], str) and body["error"]
    return body


# ------------------------------------------------------------------ probes and auth


async def test_probes_and_metrics_need_no_key(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "alive"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200 and "tandem_bundle_docs" in metrics.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": API_KEY},
        {"Authorization": "Basic x"},
    ],
)
async def test_api_refuses_missing_or_wrong_keys(
    api: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path, body in [
        ("POST", "/search", {"query": "x"}),
        ("POST", "/v1/embeddings", {"input": "x"}),
        ("GET", "/info", None),
        ("GET", "/v1/models", None),
        ("POST", "/admin/reload", None),
    ]:
        response = await api.request(method, path, json=body, headers=headers)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_admin_is_disabled_without_a_key(open_app: httpx.AsyncClient) -> None:
    assert_error(await open_app.post("/admin/reload"), 403, "admin_disabled")
    assert (await open_app.get("/v1/models")).status_code == 200  # no key: the API is open


async def test_reload_with_nothing_new_is_unchanged(api: httpx.AsyncClient) -> None:
    response = await api.post("/admin/reload", params={"wait": "true"}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "unchanged"
    response = await api.post("/admin/reload", headers=AUTH)
    assert response.status_code == 202 and response.json() == {"status": "accepted"}


# ------------------------------------------------------------------ happy paths


async def test_search_answers_with_results_timings_and_headers(api: httpx.AsyncClient) -> None:
    response = await api.post("/search", json={"query": QUERIES[0], "k": 3}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == 3
    assert {"id", "score", "text", "metadata"} <= set(body["results"][0])
    assert body["variant"] == "f32-768" and body["rescored"] is False and body["truncated"] is False
    assert set(body["timings_ms"]) >= {"queue", "embed", "search", "rescore", "total"}
    for header in ("x-queue-time", "x-embed-time", "x-search-time", "x-total-time"):
        assert float(response.headers[header]) >= 0


async def test_search_options_shape_the_answer(api: httpx.AsyncClient) -> None:
    request = {
        "query": QUERIES[3],
        "k": 4,
        "variant": "bin-768",
        "oversample": 3,
        "include_text": False,
        "include_metadata": False,
    }
    body = (await api.post("/search", json=request, headers=AUTH)).json()
    assert body["variant"] == "bin-768" and body["rescored"] is True
    assert body["stages"] == ["first_pass:bin-768", "rescore:f32-768"]
    assert all(set(hit) == {"id", "score"} for hit in body["results"])
    request |= {"rescore": False}
    body = (await api.post("/search", json=request, headers=AUTH)).json()
    assert body["rescored"] is False and body["stages"] == ["first_pass:bin-768"]


async def test_filter_returns_only_matching_metadata(api: httpx.AsyncClient) -> None:
    request = {"query": QUERIES[0], "k": 10, "filter": {"topic": "climate"}}
    body = (await api.post("/search", json=request, headers=AUTH)).json()
    assert len(body["results"]) == 10
    assert all(hit["metadata"]["topic"] == "climate" for hit in body["results"])
    request["filter"] = {"topic": "climate", "year": 1000}
    body = (await api.post("/search", json=request, headers=AUTH)).json()
    assert body["results"] == []


async def test_batch_search_answers_each_query(api: httpx.AsyncClient) -> None:
    request = {"queries": QUERIES[:3], "k": 2, "variant": "f32-256"}
    response = await api.post("/search/batch", json=request, headers=AUTH)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and all(len(r["results"]) == 2 for r in results)
    single = await api.post(
        "/search", json={"query": QUERIES[1], "k": 2, "variant": "f32-256"}, headers=AUTH
    )
    assert [h["id"] for h in results[1]["results"]] == [h["id"] for h in single.json()["results"]]


async def test_embeddings_float_base64_and_dimensions(
    api: httpx.AsyncClient, query_encoder: Encoder
) -> None:
    expected = query_encoder.encode(QUERIES[:2], "query")
    body = (await api.post("/v1/embeddings", json={"input": QUERIES[:2]}, headers=AUTH)).json()
    assert body["object"] == "list" and body["model"] == query_encoder.name
    assert body["usage"]["prompt_tokens"] > 0
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    request = {"input": QUERIES[0], "encoding_format": "base64", "dimensions": 64}
    body = (await api.post("/v1/embeddings", json=request, headers=AUTH)).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    prefix = expected[0, :64] / np.linalg.norm(expected[0, :64])
    np.testing.assert_allclose(vector, prefix, atol=1e-5)


async def test_models_and_info(api: httpx.AsyncClient, query_encoder: Encoder) -> None:
    models = (await api.get("/v1/models", headers=AUTH)).json()
    assert [m["id"] for m in models["data"]] == [query_encoder.name]
    info = (await api.get("/info", headers=AUTH)).json()
    bundle = info["bundle"]
    assert bundle["version"] == "v0001" and bundle["n_docs"] == 40
    assert {v["name"] for v in bundle["variants"]} >= {"f32-768", "bin-768-hnsw"}
    assert all(v["bytes"] > 0 and v["device"] == "cpu" for v in bundle["variants"])
    assert len(bundle["teacher"]["fingerprint"]) == 64
    assert info["student"]["fingerprint"] == query_encoder.card.fingerprint
    assert info["student"]["providers"] == ["CPUExecutionProvider"]
    assert info["faiss"]["device"] == "cpu" and info["settings"]["api_key"] == "**********"
    assert API_KEY not in (await api.get("/info", headers=AUTH)).text


# ------------------------------------------------------------------ bad input: 4xx, never 500


BAD_SEARCHES = [
    ({"query": ""}, "empty_query"),
    ({"query": "   \n"}, "empty_query"),
    ({"query": "x", "k": 0}, "validation_error"),
    ({"query": "x", "k": 1001}, "validation_error"),
    ({"query": "x", "k": 51}, "invalid_request"),  # above this server's max_k
    ({"query": "x", "variant": "f32-999"}, "unknown_variant"),
    ({"query": "x", "oversample": 0}, "validation_error"),
    ({"query": "x", "oversample": 51}, "validation_error"),
    ({"query": "x", "topk": 3}, "validation_error"),
    ({"query": 5}, "validation_error"),
    ({"k": 3}, "validation_error"),
    ({"query": "x", "filter": {'a"b': 1}}, "invalid_request"),
    ({"query": "x", "filter": {"topic": ["a", "b"]}}, "validation_error"),
]


@pytest.mark.parametrize(("body", "error_type"), BAD_SEARCHES)
async def test_bad_searches_are_clear_422s(
    api: httpx.AsyncClient, body: dict[str, Any], error_type: str
) -> None:
    assert_error(await api.post("/search", json=body, headers=AUTH), 422, error_type)


async def test_bad_bodies_and_routes(api: httpx.AsyncClient) -> None:
    headers = AUTH | {"content-type": "application/json"}
    assert (
        "invalid JSON"
        in assert_error(
            await api.post("/search", content=b'{"query": ', headers=headers),
            422,
            "validation_error",
        )["error"]
    )
    no_type = await api.post("/search", content=b'{"query": "x"}', headers=AUTH)
    assert "Content-Type" in assert_error(no_type, 422, "validation_error")["error"]
    big = {"query": "x" * (70 * 1024)}
    assert_error(await api.post("/search", json=big, headers=AUTH), 413, "payload_too_large")
    assert_error(await api.get("/nope", headers=AUTH), 404, "not_found")
    assert_error(await api.get("/search", headers=AUTH), 405, "method_not_allowed")


async def test_batch_limits(api: httpx.AsyncClient) -> None:
    assert_error(
        await api.post("/search/batch", json={"queries": []}, headers=AUTH), 422, "validation_error"
    )
    five = {"queries": ["a", "b", "c", "d", "e"]}
    assert_error(await api.post("/search/batch", json=five, headers=AUTH), 422, "invalid_request")
    assert_error(
        await api.post("/search/batch", json={"queries": ["ok", " "]}, headers=AUTH),
        422,
        "empty_query",
    )


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"input": []}, 422, "invalid_request"),
        ({"input": ""}, 422, "empty_query"),
        ({"input": [1, 2, 3]}, 422, "validation_error"),
        ({"input": "x", "dimensions": 0}, 422, "validation_error"),
        ({"input": "x", "dimensions": 100_000}, 422, "invalid_request"),
        ({"input": "x", "encoding_format": "int8"}, 422, "validation_error"),
        ({"input": "x", "model": "gpt-4"}, 404, "model_not_found"),
        ({"input": ["a"] * 5}, 422, "invalid_request"),
    ],
)
async def test_bad_embeddings(
    api: httpx.AsyncClient, body: dict[str, Any], status: int, error_type: str
) -> None:
    assert_error(await api.post("/v1/embeddings", json=body, headers=AUTH), status, error_type)


async def test_long_queries_are_truncated_and_flagged(api: httpx.AsyncClient) -> None:
    long_words = " ".join(["ocean"] * 400)  # more tokens than the encoder's maximum
    body = (await api.post("/search", json={"query": long_words, "k": 1}, headers=AUTH)).json()
    assert body["truncated"] is True
    long_chars = "glacier " * 500  # more characters than max_input_chars
    body = (await api.post("/search", json={"query": long_chars, "k": 1}, headers=AUTH)).json()
    assert body["truncated"] is True


async def test_long_queries_are_refused_when_configured(
    open_app: httpx.AsyncClient, query_encoder: Encoder
) -> None:
    too_many_chars = {"query": "x" * 2001}
    assert_error(await open_app.post("/search", json=too_many_chars), 422, "query_too_long")
    n_words = query_encoder.card.max_length + 10  # one token each, under 2,000 characters
    too_many_tokens = {"query": "sea " * n_words}
    body = assert_error(await open_app.post("/search", json=too_many_tokens), 422, "query_too_long")
    assert "tokens" in body["error"]


async def test_deadline_is_a_503_with_retry_after(open_app: httpx.AsyncClient) -> None:
    response = await open_app.post("/search", json={"query": QUERIES[0]})
    assert_error(response, 503, "deadline_exceeded")
    assert response.headers["retry-after"] == "1"


async def test_variant_restriction(open_app: httpx.AsyncClient) -> None:
    info = (await open_app.get("/info")).json()
    assert [v["name"] for v in info["bundle"]["variants"]] == ["bin-768", "f32-768"]
    assert info["bundle"]["default_variant"] == "bin-768"
    assert_error(
        await open_app.post("/search", json={"query": "x", "variant": "f32-256"}),
        422,
        "unknown_variant",
    )


async def test_metrics_count_routes_and_statuses(api: httpx.AsyncClient) -> None:
    await api.post("/search", json={"query": "counting", "k": 1}, headers=AUTH)
    await api.post("/search", json={"query": ""}, headers=AUTH)
    text = (await api.get("/metrics")).text
    assert 'tandem_requests_total{route="/search",status="200"}' in text
    assert 'tandem_requests_total{route="/search",status="422"}' in text
    assert "tandem_batch_size_count" in text and "tandem_queue_depth" in text
    assert "tandem_model_info{fingerprint=" in text and "tandem_bundle_info{" in text


async def test_api_docs_are_open_only_without_a_key(
    api: httpx.AsyncClient, open_app: httpx.AsyncClient
) -> None:
    for path in ("/docs", "/openapi.json"):
        assert_error(await api.get(path, headers=AUTH), 404, "not_found")
    schema = (await open_app.get("/openapi.json")).json()
    assert {"/search", "/search/batch", "/v1/embeddings"} <= set(schema["paths"])
