"""The search core on a served bundle, in-process, against a numpy brute-force reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tandem.bundle.format import Bundle
from tandem.bundle.placement import faiss_gpus
from tandem.bundle.search import SearchPlan, search
from tandem.evaluation.doc_side import DocSide
from tandem.evaluation.runner import rank
from tandem.models.encoder import Encoder
from tandem.server.search import Found, with_documents
from tandem.server.state import (
    LoadedBundle,
    StartupCheckError,
    load_bundle,
    resolve_version_dir,
    select_variants,
)

from tests.support.server import (
    N_DOCS,
    QUERIES,
    VARIANTS,
    assert_rescored,
    assert_top_k,
    exact_reference,
    first_pass_reference,
)


def run_funnel(loaded: LoadedBundle, queries: np.ndarray, plan: SearchPlan) -> Found:
    """What a request runs: the search core on the loaded bundle, then its documents."""
    return with_documents(loaded, search(loaded.target, queries, plan))


@pytest.fixture(scope="module")
def loaded(bundle_root: Path, query_encoder: Encoder) -> Iterator[LoadedBundle]:
    state = load_bundle(
        resolve_version_dir(bundle_root),
        query_encoder.card,
        [],
        allow_unaligned=False,
        verify=True,
        faiss_device="cpu",
    )
    yield state
    state.retire()


@pytest.fixture(scope="module")
def queries(query_encoder: Encoder) -> np.ndarray:
    return query_encoder.encode(QUERIES, "query")


def plan(
    variant: str, k: int = 5, rescore: bool = False, oversample: int = 2, **kw: object
) -> SearchPlan:
    options: dict[str, object] = {"ef_search": 16, "filter": None, "filter_exact_max": 50_000}
    options.update(kw)
    return SearchPlan(variant=variant, k=k, rescore=rescore, oversample=oversample, **options)  # type: ignore[arg-type]


def internal_ids(bundle: Bundle, hits: list) -> np.ndarray:
    return bundle.lookup([doc.id for doc, _ in hits])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rescore", [False, True])
def test_each_variant_matches_brute_force(
    loaded: LoadedBundle, queries: np.ndarray, variant: str, rescore: bool
) -> None:
    k, oversample = 5, 2
    result = run_funnel(loaded, queries, plan(variant, k, rescore, oversample))
    assert result.ranked.rescored is rescore
    assert result.ranked.stages[0] == f"first_pass:{variant}"
    for query, hits in zip(queries, result.hits, strict=True):
        ids = internal_ids(loaded.bundle, hits)
        scores = np.array([s for _, s in hits], dtype=np.float32)
        first = first_pass_reference(loaded.bundle, variant, query)
        if rescore:
            assert_rescored(
                ids, scores, first, exact_reference(loaded.bundle, query), k, oversample
            )
        else:
            assert_top_k(ids, scores, first, k)


def test_k_beyond_the_corpus_returns_every_document_once(
    loaded: LoadedBundle, queries: np.ndarray
) -> None:
    result = run_funnel(
        loaded, queries[:1], plan("bin-768-hnsw", k=100, rescore=True, oversample=3)
    )
    ids = internal_ids(loaded.bundle, result.hits[0])
    assert sorted(ids.tolist()) == list(range(N_DOCS))
    assert_top_k(
        ids,
        np.array([s for _, s in result.hits[0]]),
        exact_reference(loaded.bundle, queries[0]),
        100,
    )


@pytest.mark.parametrize("exact_max", [50_000, 0])
def test_filter_keeps_only_matching_documents(
    loaded: LoadedBundle, queries: np.ndarray, exact_max: int
) -> None:
    """Narrow filters are scored exactly; broad ones post-filter an enlarged first pass."""
    p = plan("f32-768", k=5, rescore=True, filter={"topic": "climate"}, filter_exact_max=exact_max)
    result = run_funnel(loaded, queries, p)
    allowed = loaded.bundle.filter_ids({"topic": "climate"})
    assert 0 < allowed.size < N_DOCS
    assert ("exact" in result.ranked.stages) is (exact_max > 0)
    for query, hits in zip(queries, result.hits, strict=True):
        assert all(doc.metadata["topic"] == "climate" for doc, _ in hits)
        reference = np.full(N_DOCS, -np.inf, dtype=np.float32)
        reference[allowed] = exact_reference(loaded.bundle, query)[allowed]
        ids = internal_ids(loaded.bundle, hits)
        assert_top_k(ids, np.array([s for _, s in hits], dtype=np.float32), reference, 5)


def test_filter_matching_nothing_returns_no_results(
    loaded: LoadedBundle, queries: np.ndarray
) -> None:
    result = run_funnel(loaded, queries[:2], plan("bin-768", filter={"topic": "no-such-topic"}))
    assert result.hits == [[], []]


def test_select_variants_defaults_and_refusals(loaded: LoadedBundle) -> None:
    specs, default = select_variants(loaded.bundle, [])
    assert list(specs) == loaded.bundle.variant_names() and default == "f32-768"
    specs, default = select_variants(loaded.bundle, ["bin-768", "f32-256"])
    assert list(specs) == ["bin-768", "f32-256"] and default == "bin-768"
    with pytest.raises(StartupCheckError, match="int8-256"):
        select_variants(loaded.bundle, ["int8-256"])


@pytest.mark.skipif(faiss_gpus() > 0, reason="this FAISS sees a GPU")
def test_faiss_device_cuda_without_a_gpu_is_refused(
    bundle_root: Path, query_encoder: Encoder
) -> None:
    with pytest.raises(StartupCheckError, match="no GPU"):
        load_bundle(
            resolve_version_dir(bundle_root),
            query_encoder.card,
            [],
            allow_unaligned=False,
            verify=False,
            faiss_device="cuda",
        )


@pytest.mark.gpu
@pytest.mark.skipif(faiss_gpus() == 0, reason="needs GPU FAISS and a GPU")
def test_gpu_indexes_answer_like_cpu_ones(
    bundle_root: Path, query_encoder: Encoder, loaded: LoadedBundle, queries: np.ndarray
) -> None:
    gpu = load_bundle(
        resolve_version_dir(bundle_root),
        query_encoder.card,
        [],
        allow_unaligned=False,
        verify=False,
        faiss_device="auto",
    )
    try:
        assert gpu.devices["f32-768"] == "cuda" and gpu.devices["bin-768-hnsw"] == "cpu"
        for variant in ("f32-768", "bin-768"):
            on_gpu = run_funnel(gpu, queries, plan(variant, rescore=True))
            on_cpu = run_funnel(loaded, queries, plan(variant, rescore=True))
            for a, b in zip(on_gpu.hits, on_cpu.hits, strict=True):
                np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-4)
    finally:
        gpu.retire()


@pytest.mark.parametrize(
    ("variant", "oversample"), [("f32-768", None), ("bin-768", 3), ("f32-256", 2), ("int8-768", 2)]
)
def test_evaluation_ranks_exactly_as_the_server(
    loaded: LoadedBundle,
    query_encoder: Encoder,
    queries: np.ndarray,
    variant: str,
    oversample: int | None,
) -> None:
    """One search core: evaluation's ranking (with or without its score table) is the server's."""
    docs = DocSide(
        query_encoder, loaded.bundle.vectors, loaded.bundle.external_ids(), loaded.bundle
    )
    spec = loaded.specs[variant]
    index, _ = docs.index(spec)
    k = 7
    served = run_funnel(loaded, queries, plan(variant, k, oversample is not None, oversample or 1))
    table = docs.exact_scores(query_encoder.card.fingerprint, queries)
    for with_table in (None, table):
        scores, ids = rank(spec, index, docs, queries, k, oversample, 16, with_table)
        for row, hits in enumerate(served.hits):
            assert ids[row].tolist() == internal_ids(loaded.bundle, hits).tolist()
            np.testing.assert_allclose(scores[row], [s for _, s in hits], rtol=1e-6, atol=1e-6)
