"""The search service on domain types, no HTTP: options in, hits and stage timings out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from tandem.bundle.search import search
from tandem.server.app import create_app
from tandem.server.domain import SearchOptions
from tandem.server.search import SearchService
from tandem.server.settings import ServerSettings

from tests.support.server import QUERIES

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def service_for(
    bundle_root: Path, student: Path, **kw: object
) -> AsyncIterator[SearchService]:
    settings = ServerSettings(
        bundle=bundle_root,
        student=str(student),
        faiss_device="cpu",
        **kw,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app.state.service


def assert_same_ranking(
    ids: np.ndarray, scores: np.ndarray, ref_ids: np.ndarray, ref_scores: np.ndarray
) -> None:
    """Same hits in the same order, up to near-ties (a batched embedding differs by ~1e-6)."""
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    start = 0
    for end in range(1, len(scores) + 1):
        if end == len(scores) or ref_scores[end - 1] - ref_scores[end] > 1e-4:
            if end < len(scores):  # a tie group cut by k may hold other documents
                assert set(ids[start:end]) == set(ref_ids[start:end])
            start = end


async def test_fields_choose_what_hits_carry(bundle_root: Path, query_encoder_dir: Path) -> None:
    async with service_for(bundle_root, query_encoder_dir) as service:
        (full,) = await service.search(QUERIES[:1], SearchOptions(k=3))
        lean = SearchOptions(k=3, fields=frozenset({"id", "score"}))
        (ids_only,) = await service.search(QUERIES[:1], lean)
    assert all(h.text and h.metadata is not None for h in full.hits)
    assert all(h.text is None and h.metadata is None for h in ids_only.hits)
    assert [(h.id, h.score) for h in full.hits] == [(h.id, h.score) for h in ids_only.hits]
    t = full.timings
    assert t.total_s >= t.embed_s > 0 and t.search_s > 0 and t.fetch_s > 0


async def test_a_micro_batch_of_different_plans_answers_each_as_alone(
    bundle_root: Path, query_encoder_dir: Path
) -> None:
    """Concurrent requests with different options share one ONNX run and one stage."""
    options = [
        SearchOptions(k=5),
        SearchOptions(k=3, variant="bin-768", rescore=True, oversample=2),
        SearchOptions(k=4, variant="f32-256"),
        SearchOptions(k=5, filter={"topic": "climate"}),
    ]
    # fp32: int8 graphs quantize activations per batch, so their scores move with batch mates.
    settings = {"max_wait_ms": 200.0, "precision": "fp32"}
    async with service_for(bundle_root, query_encoder_dir, **settings) as service:
        # One request first, so the batcher sees concurrent traffic and waits for company.
        await asyncio.gather(*(service.search([q], SearchOptions()) for q in QUERIES[:2]))
        results = await asyncio.gather(
            *(service.search([q], o) for q, o in zip(QUERIES, options, strict=False))
        )
        loaded = service.loaded
        batch_sizes = service.metrics.registry.get_sample_value("tandem_batch_size_sum")
        assert batch_sizes is not None and batch_sizes > len(options)
        for query, opts, (result,) in zip(QUERIES, options, results, strict=False):
            vector = service.encoder.encode([query], "query")
            expected = search(loaded.target, vector, service.plan(loaded, opts))
            ids = loaded.bundle.lookup([h.id for h in result.hits])
            scores = np.array([h.score for h in result.hits], dtype=np.float32)
            assert_same_ranking(ids, scores, expected.ids[0], expected.scores[0])
            assert result.variant == (opts.variant or loaded.default_variant)
    assert all(h.metadata["topic"] == "climate" for h in results[3][0].hits)


async def test_truncation_is_reported_per_query(bundle_root: Path, query_encoder_dir: Path) -> None:
    long = "glaciers melt " * 400  # past the encoder's 256 tokens, under max_input_chars
    async with service_for(bundle_root, query_encoder_dir) as service:
        results = await service.search(["short query", long, "another"], SearchOptions(k=2))
        embedded = await service.embed(["short", long], None)
    assert [r.truncated for r in results] == [False, True, False]
    assert embedded.truncated == [False, True]
    assert embedded.vectors.shape == (2, service.encoder.dim)
    assert embedded.n_tokens == sum(
        len(r) for r in service.encoder.tokenize_rows(["short", long]).ids
    )
