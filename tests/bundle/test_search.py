"""The search core on synthetic vectors, against numpy brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from tandem.bundle.search import SearchPlan, SearchTarget, keep_top, rescore, search
from tandem.bundle.variants import VariantSpec, build_index


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return _unit(rng, 500, 64), _unit(rng, 20, 64)


def _target(docs: np.ndarray, *names: str, table: np.ndarray | None = None) -> SearchTarget:
    specs = {name: VariantSpec.parse(name, docs.shape[1]) for name in names}
    indexes = {name: build_index(spec, docs) for name, spec in specs.items()}
    return SearchTarget(docs, specs, indexes, exact_scores=table)


def _assert_same_topk(ids: np.ndarray, scores: np.ndarray, exact: np.ndarray, k: int) -> None:
    """Tie-tolerant: every returned score equals the exact k-th best score profile."""
    expected = -np.sort(-exact, axis=1)[:, :k]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(exact, ids, axis=1), scores, rtol=1e-5, atol=1e-5)


def test_rescore_keeps_the_exact_best_candidates(data: tuple[np.ndarray, np.ndarray]) -> None:
    docs, queries = data
    exact = queries @ docs.T  # (20, 500)
    candidates = np.tile(np.arange(50), (len(queries), 1))
    candidates[:, -5:] = -1  # padding is never returned
    ids, scores = rescore(_target(docs), queries, candidates, k=10)
    assert all((row >= 0).all() and (row < 45).all() for row in ids)
    _assert_same_topk(np.stack(ids), np.stack(scores), exact[:, :45], 10)


def test_rescoring_from_a_score_table_matches_reading_vectors(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    docs, queries = data
    candidates = np.argsort(-(queries[:, :8] @ docs[:, :8].T), axis=1)[:, :40]  # a lossy first pass
    read = rescore(_target(docs), queries, candidates, k=10)
    looked_up = rescore(_target(docs, table=queries @ docs.T), queries, candidates, k=10)
    np.testing.assert_array_equal(np.stack(read[0]), np.stack(looked_up[0]))
    np.testing.assert_allclose(np.stack(read[1]), np.stack(looked_up[1]), rtol=1e-5)


def test_binary_first_pass_with_full_oversample_equals_exact_search(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    docs, queries = data
    plan = SearchPlan("bin-64", k=10, rescore=True, oversample=50)  # all 500 candidates
    scores, ids = search(_target(docs, "bin-64"), queries, plan).padded(10)
    _assert_same_topk(ids, scores, queries @ docs.T, 10)


def test_rescoring_recovers_quality_lost_by_truncation(data: tuple[np.ndarray, np.ndarray]) -> None:
    docs, queries = data
    target = _target(docs, "f32-16")
    truth = np.argsort(-(queries @ docs.T), axis=1)[:, :10]

    def overlap(ids: np.ndarray) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)]))

    _, plain = search(target, queries, SearchPlan("f32-16", k=10, rescore=False)).padded(10)
    rescored = search(target, queries, SearchPlan("f32-16", k=10, rescore=True, oversample=10))
    assert rescored.rescored and rescored.stages == ["first_pass:f32-16", "rescore:f32-64"]
    assert overlap(rescored.padded(10)[1]) > overlap(plain)


def test_filters_need_a_target_that_can_filter(data: tuple[np.ndarray, np.ndarray]) -> None:
    docs, queries = data
    plan = SearchPlan("f32-64", k=5, rescore=False, filter={"topic": "x"})
    with pytest.raises(ValueError, match="filter"):
        search(_target(docs, "f32-64"), queries, plan)


def test_filter_keeps_only_allowed_rows_exactly_or_by_widening(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    docs, queries = data
    allowed = np.arange(0, 500, 7, dtype=np.int64)
    target = _target(docs, "bin-64")
    target.filter_ids = lambda _filter: allowed
    exact = np.full((len(queries), 500), -np.inf, dtype=np.float32)
    exact[:, allowed] = (queries @ docs.T)[:, allowed]
    for exact_max in (10_000, 0):  # scored exactly / first pass widened then rescored
        plan = SearchPlan(
            "bin-64", k=5, rescore=True, oversample=200, filter={"t": 1}, filter_exact_max=exact_max
        )
        ranked = search(target, queries, plan)
        assert ("exact" in ranked.stages) is (exact_max > 0)
        scores, ids = ranked.padded(5)
        assert np.isin(ids, allowed).all()
        _assert_same_topk(ids, scores, exact, 5)


def test_keep_top_orders_ties_by_id_and_drops_padding() -> None:
    scores = np.array([[0.5, 0.9, 0.5, -np.inf]], dtype=np.float32)
    ids = np.array([[7, 3, 2, -1]], dtype=np.int64)
    top_ids, top_scores = keep_top(ids, scores, 4)
    assert top_ids[0].tolist() == [3, 2, 7]
    assert top_scores[0].tolist() == pytest.approx([0.9, 0.5, 0.5])
