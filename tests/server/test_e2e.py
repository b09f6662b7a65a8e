"""End to end against a real ``tandem serve`` process on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tandem.bundle.format import open_bundle
from tandem.models.encoder import Encoder
from tandem.server.batching import INLINE_MAX_CONNECTIONS, INLINE_QUIET_S

from tests.support.server import (
    API_KEY,
    QUERIES,
    VARIANTS,
    ServerProcess,
    assert_rescored,
    assert_top_k,
    exact_reference,
    first_pass_reference,
    metric,
    scrape,
)

pytestmark = pytest.mark.slow
K, OVERSAMPLE = 5, 2


def served_embedding(client: httpx.Client, text: str) -> np.ndarray:
    """The query vector exactly as the server computes it (same batcher path, batch of one)."""
    body = client.post("/v1/embeddings", json={"input": text}).json()
    return np.array(body["data"][0]["embedding"], dtype=np.float32)


def test_embeddings_equal_the_encoder(client: httpx.Client, query_encoder: Encoder) -> None:
    expected = query_encoder.encode(QUERIES, "query")
    body = client.post("/v1/embeddings", json={"input": QUERIES}).json()
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert [d["index"] for d in body["data"]] == list(range(len(QUERIES)))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == int(
        query_encoder.tokenize(QUERIES).attention_mask.sum()
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_search_equals_brute_force_for_each_variant(
    client: httpx.Client, bundle_root: Path, variant: str
) -> None:
    with open_bundle(bundle_root) as bundle:
        for text in QUERIES[:3]:
            query = served_embedding(client, text)
            first = first_pass_reference(bundle, variant, query)
            for rescore in (False, True):
                request = {
                    "query": text,
                    "k": K,
                    "variant": variant,
                    "rescore": rescore,
                    "oversample": OVERSAMPLE,
                    "include_text": False,
                }
                body = client.post("/search", json=request).json()
                assert body["variant"] == variant and body["rescored"] is rescore, body
                ids = bundle.lookup([hit["id"] for hit in body["results"]])
                scores = np.array([hit["score"] for hit in body["results"]], dtype=np.float32)
                if rescore:
                    assert_rescored(
                        ids, scores, first, exact_reference(bundle, query), K, OVERSAMPLE
                    )
                else:
                    assert_top_k(ids, scores, first, K)


def test_batch_search_equals_single_searches(client: httpx.Client) -> None:
    request = {"queries": QUERIES, "k": 4, "variant": "bin-768", "include_text": False}
    batch = client.post("/search/batch", json=request).json()["results"]
    for text, answer in zip(QUERIES, batch, strict=True):
        single = client.post("/search", json={"query": text, "k": 4, "variant": "bin-768"}).json()
        np.testing.assert_allclose(
            [h["score"] for h in answer["results"]],
            [h["score"] for h in single["results"]],
            atol=1e-4,
        )


def test_metrics_appear_and_move(server: ServerProcess, client: httpx.Client) -> None:
    before = scrape(server.url)
    n = 6
    for i in range(n):
        response = client.post(
            "/search", json={"query": QUERIES[i % len(QUERIES)], "variant": "bin-768"}
        )
        assert response.status_code == 200
    assert client.post("/search", json={"query": " "}).status_code == 422
    after = scrape(server.url)

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("tandem_requests_total", route="/search", status="200") == n
    assert moved("tandem_requests_total", route="/search", status="422") == 1
    assert moved("tandem_request_duration_seconds_count", route="/search") == n + 1
    for name in ("tandem_queue_duration_seconds_count", "tandem_tokenize_duration_seconds_count"):
        assert moved(name) == n
    assert moved("tandem_search_duration_seconds_count", variant="bin-768") == n
    assert moved("tandem_rescore_duration_seconds_count", variant="bin-768") == n
    assert 1 <= moved("tandem_embed_duration_seconds_count") <= n
    assert moved("tandem_batch_size_sum") == n
    assert moved("tandem_batch_tokens_sum") > 0
    assert metric(after, "tandem_bundle_docs") == 40
    assert metric(after, "tandem_queue_depth") == 0 and metric(after, "tandem_ready") == 1
    info = [k for k in after if k[0] == "tandem_bundle_info" and after[k] == 1]
    assert len(info) == 1 and dict(info[0][1])["version"] == "v0001"
    assert any(k[0] == "tandem_model_info" for k in after)


def test_lone_queries_run_inline_and_a_burst_is_batched_with_the_same_answers(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Sequential queries skip the thread hop (uvicorn's request count says they are alone);
    concurrent ones share batches; both paths give the same hits."""
    request = {"k": 5, "variant": "f32-768", "include_text": False}
    time.sleep(INLINE_QUIET_S * 2)  # no request of an earlier test counts as company
    before = scrape(server.url)
    alone = [client.post("/search", json={**request, "query": q}).json() for q in QUERIES]
    middle = scrape(server.url)
    assert metric(middle, "tandem_inline_runs_total") - metric(
        before, "tandem_inline_runs_total"
    ) == len(QUERIES)

    start = threading.Barrier(8)

    def user(offset: int) -> list[dict[str, Any]]:
        # Connected first, then all at once: the server sees the requests overlap.
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as own:
            own.get("/healthz")
            start.wait()
            return [
                own.post(
                    "/search", json={**request, "query": QUERIES[(offset + j) % len(QUERIES)]}
                ).json()
                for j in range(4)
            ]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(user, range(8)))
    texts = [QUERIES[(offset + j) % len(QUERIES)] for offset in range(8) for j in range(4)]
    crowd = [a for per_user in answers for a in per_user]
    after = scrape(server.url)
    inline = metric(after, "tandem_inline_runs_total") - metric(middle, "tandem_inline_runs_total")
    batches = metric(after, "tandem_batch_size_count") - metric(middle, "tandem_batch_size_count")
    assert inline < len(texts) and batches < len(texts)  # company was seen: batches formed
    by_text = dict(zip(QUERIES, alone, strict=True))
    for text, answer in zip(texts, crowd, strict=True):
        assert [h["id"] for h in answer["results"]] == [h["id"] for h in by_text[text]["results"]]


def test_many_connected_clients_keep_a_lone_query_off_the_loop(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Idle keep-alive clients are company: their next requests could land mid-run."""
    request = {"query": QUERIES[0], "k": 5, "variant": "f32-768", "include_text": False}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    others = [
        httpx.Client(base_url=server.url, headers=headers) for _ in range(INLINE_MAX_CONNECTIONS)
    ]
    try:
        for other in others:
            assert other.get("/healthz").status_code == 200  # connected, then idle
        time.sleep(INLINE_QUIET_S * 2)
        before = scrape(server.url)
        crowded = [client.post("/search", json=request).json() for _ in range(3)]
        after = scrape(server.url)
    finally:
        for other in others:
            other.close()
    assert metric(after, "tandem_inline_runs_total") == metric(before, "tandem_inline_runs_total")
    time.sleep(INLINE_QUIET_S * 2)  # the clients left: a lone query runs inline again
    alone = client.post("/search", json=request).json()
    assert (
        metric(scrape(server.url), "tandem_inline_runs_total")
        == metric(after, "tandem_inline_runs_total") + 1
    )
    assert alone["results"] == crowded[0]["results"] == crowded[2]["results"]
