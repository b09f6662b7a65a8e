"""TandemClient and AsyncTandemClient against a real ``tandem serve`` on 127.0.0.1."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tandem.client import (
    AsyncTandemClient,
    AuthenticationError,
    InvalidRequestError,
    RetryPolicy,
    TandemClient,
    TandemConnectionError,
    TandemTimeoutError,
)
from tandem.client.retry import parse_retry_after
from tandem.schemas import EmbeddingsResponse, Hit, SearchResponse
from tests.support.server import API_KEY, QUERIES, ServerProcess, free_port

pytestmark = pytest.mark.slow
SERVER_ONLY_MODULES = ("fastapi", "uvicorn", "onnxruntime", "faiss", "numpy")
FRAMEWORKS = ("langchain_core", "llama_index", "haystack", "openai")


class Attempts:
    """Counts the requests an httpx client really sent (an event hook), by status."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def __call__(self, response: httpx.Response) -> None:
        self.statuses.append(response.status_code)


@pytest.fixture()
def attempts() -> Attempts:
    return Attempts()


@pytest.fixture()
def client(server: ServerProcess, attempts: Attempts) -> Iterator[TandemClient]:
    http = httpx.Client(event_hooks={"response": [attempts]})
    with http, TandemClient(server.url, api_key=API_KEY, http_client=http) as tandem:
        yield tandem


def raw_search(server: ServerProcess, body: dict[str, object]) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    response = httpx.post(f"{server.url}/search", json=body, headers=headers, timeout=30)
    response.raise_for_status()
    data: dict[str, object] = response.json()
    return data


def test_import_pulls_in_no_server_side_or_framework_modules() -> None:
    code = (
        "import json, sys; import tandem.client; "
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert "httpx" in loaded and "pydantic" in loaded
    assert not loaded & set(SERVER_ONLY_MODULES), loaded & set(SERVER_ONLY_MODULES)
    assert not loaded & set(FRAMEWORKS), loaded & set(FRAMEWORKS)


def test_wire_models_are_the_servers_own() -> None:
    from tandem.server import schemas as server_schemas

    assert server_schemas.SearchResponse is SearchResponse
    assert server_schemas.Hit is Hit
    assert set(server_schemas.__all__) >= {"SearchRequest", "SearchResponse", "ErrorBody"}


def test_search_returns_what_the_server_answers(
    server: ServerProcess, client: TandemClient
) -> None:
    response = client.search(QUERIES[0], k=5)
    raw = raw_search(server, {"query": QUERIES[0], "k": 5})
    assert isinstance(response, SearchResponse)
    assert all(isinstance(hit, Hit) for hit in response.results)
    assert [h.id for h in response.results] == [h["id"] for h in raw["results"]]  # type: ignore[attr-defined]
    for hit, expected in zip(response.results, raw["results"], strict=True):  # type: ignore[call-overload]
        assert hit.score == pytest.approx(expected["score"], abs=1e-6)
        assert hit.text == expected["text"] and hit.metadata == expected["metadata"]
    assert response.variant == raw["variant"]


def test_search_options_reach_the_server(client: TandemClient) -> None:
    response = client.search(QUERIES[3], k=3, variant="bin-768", rescore=False)
    assert len(response.results) == 3
    assert response.variant == "bin-768" and response.rescored is False
    rescored = client.search(QUERIES[3], k=3, variant="bin-768", rescore=True, oversample=5)
    assert rescored.rescored is True
    climate = client.search(QUERIES[0], k=5, filter={"topic": "climate"})
    assert climate.results
    assert all((h.metadata or {}).get("topic") == "climate" for h in climate.results)
    bare = client.search(QUERIES[0], k=2, include_text=False, include_metadata=False)
    assert all(h.text is None and h.metadata is None for h in bare.results)


def test_mode_is_passed_through_and_omitted_when_none(client: TandemClient) -> None:
    # Omitted: the server (which may not know "mode" at all) answers normally.
    assert client.search(QUERIES[1], k=2).results
    # Given: it reaches the server, which refuses a value it does not know.
    with pytest.raises(InvalidRequestError) as caught:
        client.search(QUERIES[1], k=2, mode="no-such-mode")
    assert "mode" in caught.value.message


def test_search_many_keeps_the_order_of_the_queries(client: TandemClient) -> None:
    batch = client.search_many(QUERIES[:3], k=4)
    assert len(batch) == 3
    for query, response in zip(QUERIES[:3], batch, strict=True):
        single = client.search(query, k=4)
        assert [h.id for h in response.results] == [h.id for h in single.results]


def test_embed_returns_unit_vectors_of_the_students_dimension(client: TandemClient) -> None:
    dim = client.info()["student"]["dim"]
    response = client.embed(QUERIES[:2])
    assert isinstance(response, EmbeddingsResponse)
    assert [d.index for d in response.data] == [0, 1]
    for item in response.data:
        assert isinstance(item.embedding, list) and len(item.embedding) == dim
        assert math.fsum(x * x for x in item.embedding) == pytest.approx(1.0, abs=1e-4)
    assert response.usage.prompt_tokens > 0
    short = client.embed("one text", dimensions=64)
    assert len(short.data) == 1 and len(short.data[0].embedding) == 64


def test_info_and_ready(server: ServerProcess, client: TandemClient) -> None:
    info = client.info()
    assert info["bundle"]["n_docs"] == 40
    assert {v["name"] for v in info["bundle"]["variants"]} == {"f32-768", "bin-768"}
    assert client.ready() is True
    with TandemClient(f"http://127.0.0.1:{free_port()}") as nobody:
        assert nobody.ready() is False


def test_422_raises_typed_error_with_the_servers_type_and_message_without_retrying(
    client: TandemClient, attempts: Attempts
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        client.search(QUERIES[0], variant="no-such-variant")
    error = caught.value
    assert error.status_code == 422 and error.type == "unknown_variant"
    assert "no-such-variant" in error.message and "f32-768" in error.message
    assert attempts.statuses == [422] and client.retries == 0

    with pytest.raises(InvalidRequestError) as caught:
        client.search(QUERIES[0], k=0)
    assert caught.value.type == "validation_error"
    assert any(detail.loc[-1] == "k" for detail in caught.value.details)
    assert attempts.statuses == [422, 422] and client.retries == 0


def test_wrong_key_is_an_authentication_error_and_the_env_key_is_used(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = Attempts()
    with (
        httpx.Client(event_hooks={"response": [hook]}) as http,
        TandemClient(server.url, api_key="wrong", http_client=http) as wrong,
    ):
        with pytest.raises(AuthenticationError) as caught:
            wrong.search(QUERIES[0])
    assert caught.value.status_code == 401 and caught.value.type == "unauthorized"
    assert hook.statuses == [401]

    monkeypatch.setenv("TANDEM_URL", server.url)
    monkeypatch.setenv("TANDEM_API_KEY", API_KEY)
    with TandemClient() as from_env:
        assert from_env.url == server.url
        assert len(from_env.search(QUERIES[0], k=1).results) == 1


def test_unreachable_server_raises_after_retrying_the_connection() -> None:
    policy = RetryPolicy(max_retries=2, backoff_s=0.01)
    with TandemClient(f"http://127.0.0.1:{free_port()}", retry=policy) as client:
        with pytest.raises(TandemConnectionError, match="ConnectError"):
            client.search("anything")
        assert client.retries == 2


def test_read_timeout_is_raised_without_retrying() -> None:
    # A socket that listens but never answers: the connection is made, the reply never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with TandemClient(url, timeout=0.3) as client:
            with pytest.raises(TandemTimeoutError, match="ReadTimeout"):
                client.search("anything")
            assert client.retries == 0


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    policy = RetryPolicy(max_retries=2, backoff_s=0.2, max_retry_after_s=5)
    for _ in range(50):
        first = policy.delay(1, 1.0)
        assert first is not None and 1.0 <= first <= 1.1
        plain = policy.delay(2, None)
        assert plain is not None and 0.2 <= plain <= 0.4
    assert policy.delay(3, None) is None  # out of retries
    assert policy.delay(1, 30.0) is None  # longer than the caller will wait


@pytest.mark.anyio
async def test_async_client_mirrors_the_sync_one(
    server: ServerProcess, client: TandemClient
) -> None:
    async with AsyncTandemClient(server.url, api_key=API_KEY) as aclient:
        assert await aclient.ready() is True
        response = await aclient.search(QUERIES[2], k=3, variant="f32-768")
        expected = client.search(QUERIES[2], k=3, variant="f32-768")
        assert [h.id for h in response.results] == [h.id for h in expected.results]
        batch = await aclient.search_many(QUERIES[:2], k=2)
        assert [len(r.results) for r in batch] == [2, 2]
        embedded = await aclient.embed(QUERIES[0])
        assert len(embedded.data) == 1
        assert (await aclient.info())["bundle"]["n_docs"] == 40
        with pytest.raises(InvalidRequestError) as caught:
            await aclient.search(QUERIES[0], k=5000)
        assert caught.value.type == "validation_error" and aclient.retries == 0
