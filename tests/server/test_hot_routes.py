"""The hot routes: answered without FastAPI's router, exactly as FastAPI would answer them.

Two in-process apps over the session bundle differ only in ``hot_routes``;
every request below gets the same status, headers and body from both (only
the stage timings differ). A second group drives ``HotRoutes`` directly
around a recording app to show which requests it answers itself and which it
passes on, body intact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tandem.server.app import create_app
from tandem.server.routes.hot import HotRoutes
from tandem.server.settings import ServerSettings

from tests.support.server import API_KEY, QUERIES

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _settings(bundle_root: Path, query_encoder_dir: Path, hot: bool) -> ServerSettings:
    return ServerSettings(
        bundle=bundle_root,
        student=str(query_encoder_dir),
        api_key=API_KEY,
        max_k=50,
        faiss_device="cpu",
        hot_routes=hot,
    )


@pytest.fixture(scope="module")
async def apps(
    bundle_root: Path, query_encoder_dir: Path
) -> AsyncIterator[dict[str, tuple[FastAPI, httpx.AsyncClient]]]:
    out: dict[str, tuple[FastAPI, httpx.AsyncClient]] = {}
    hot = create_app(_settings(bundle_root, query_encoder_dir, hot=True))
    fastapi_only = create_app(_settings(bundle_root, query_encoder_dir, hot=False))
    async with hot.router.lifespan_context(hot), fastapi_only.router.lifespan_context(fastapi_only):
        for name, app in (("hot", hot), ("fastapi", fastapi_only)):
            transport = httpx.ASGITransport(app=app)
            out[name] = (app, httpx.AsyncClient(transport=transport, base_url="http://tandem"))
        yield out
        for _, client in out.values():
            await client.aclose()


def _without_timings(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _without_timings(v) for k, v in body.items() if k != "timings_ms"}
    if isinstance(body, list):
        return [_without_timings(v) for v in body]
    return body


def _search(**extra: Any) -> bytes:
    return json.dumps({"query": QUERIES[0], "k": 5} | extra).encode()


CASES: dict[str, tuple[str, bytes, dict[str, str]]] = {
    "search": ("/search", _search(), AUTH | JSON),
    "search, ids and scores": ("/search", _search(fields=["id", "score"]), AUTH | JSON),
    "search, no text": ("/search", _search(include_text=False), AUTH | JSON),
    "search, charset in the content type": (
        "/search",
        _search(),
        AUTH | {"Content-Type": "application/json; charset=utf-8"},
    ),
    "batch": (
        "/search/batch",
        json.dumps({"queries": QUERIES[:3], "k": 3}).encode(),
        AUTH | JSON,
    ),
    "embeddings": ("/v1/embeddings", json.dumps({"input": QUERIES[:2]}).encode(), AUTH | JSON),
    "embeddings, base64 and fewer dimensions": (
        "/v1/embeddings",
        json.dumps({"input": QUERIES[1], "encoding_format": "base64", "dimensions": 64}).encode(),
        AUTH | JSON,
    ),
    "search, fused mode": ("/search", _search(mode="fused"), AUTH | JSON),
    # Errors raised while answering: the hot path's error answer.
    "empty query": ("/search", _search(query="  "), AUTH | JSON),
    "unknown variant": ("/search", _search(variant="f32-9"), AUTH | JSON),
    "model not served": (
        "/v1/embeddings",
        json.dumps({"input": "x", "model": "not-this-one"}).encode(),
        AUTH | JSON,
    ),
    "no key": ("/search", _search(), JSON),
    "wrong key": ("/search", _search(), {"Authorization": "Bearer nope"} | JSON),
    # Bodies that do not validate: FastAPI answers them on both apps.
    "k out of range": ("/search", _search(k=0), AUTH | JSON),
    "over max_k": ("/search", _search(k=51), AUTH | JSON),
    "not JSON": ("/search", b'{"query": "x", ', AUTH | JSON),
    "no key and a bad body": ("/search", _search(k=0), JSON),
    "form content type": ("/search", _search(), AUTH | {"Content-Type": "text/plain"}),
    # JSON that Python's json module reads but pydantic's parser refuses: FastAPI answers.
    "lone surrogate escape": ("/search", b'{"query": "mould \\ud800", "k": 3}', AUTH | JSON),
    "repeated key": ("/search", b'{"query": "mould", "k": 50, "k": 3}', AUTH | JSON),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_hot_path_answers_as_fastapi_does(
    apps: dict[str, tuple[FastAPI, httpx.AsyncClient]], case: str
) -> None:
    path, body, headers = CASES[case]
    answers = {
        name: await client.post(path, content=body, headers=headers)
        for name, (_, client) in apps.items()
    }
    hot, fastapi = answers["hot"], answers["fastapi"]
    assert hot.status_code == fastapi.status_code, (hot.text, fastapi.text)
    assert _without_timings(hot.json()) == _without_timings(fastapi.json())
    for name in ("content-type", "retry-after", "www-authenticate"):
        assert hot.headers.get(name) == fastapi.headers.get(name)
    assert {h for h in hot.headers if h.startswith("x-")} == {
        h for h in fastapi.headers if h.startswith("x-")
    }


async def test_hot_answers_keep_their_metrics_label(
    apps: dict[str, tuple[FastAPI, httpx.AsyncClient]],
) -> None:
    _, client = apps["hot"]
    assert (await client.post("/search", content=_search(), headers=AUTH | JSON)).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'tandem_requests_total{route="/search",status="200"}' in metrics
    assert 'route="unmatched"' not in metrics


class Recorder:
    """Stands in for FastAPI behind ``HotRoutes``: records what reaches it, answers 299."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            self.bodies.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _call(
    app: FastAPI, method: str, path: str, body: bytes, content_type: bytes
) -> tuple[Recorder, int, bytes]:
    recorder = Recorder()
    hot = HotRoutes(recorder)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [
            (b"content-type", content_type),
            (b"authorization", f"Bearer {API_KEY}".encode()),
        ],
        "app": app,
    }
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]  # a body in two messages

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await hot(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return recorder, status, payload


async def test_a_valid_post_is_answered_without_fastapi(
    apps: dict[str, tuple[FastAPI, httpx.AsyncClient]],
) -> None:
    app, _ = apps["hot"]
    recorder, status, payload = await _call(app, "POST", "/search", _search(), b"application/json")
    assert recorder.bodies == []
    assert status == 200
    assert len(json.loads(payload)["results"]) == 5


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"),
    [
        ("POST", "/search", _search(k=0), b"application/json"),  # does not validate
        ("POST", "/search", b"not json", b"application/json"),
        ("POST", "/search", _search(), b"text/plain"),
        ("PUT", "/search", _search(), b"application/json"),
        ("POST", "/admin/reload", b"{}", b"application/json"),
    ],
)
async def test_everything_else_reaches_fastapi_with_its_body(
    apps: dict[str, tuple[FastAPI, httpx.AsyncClient]],
    method: str,
    path: str,
    body: bytes,
    content_type: bytes,
) -> None:
    app, _ = apps["hot"]
    recorder, status, _ = await _call(app, method, path, body, content_type)
    assert status == 299
    assert b"".join(recorder.bodies) == body
