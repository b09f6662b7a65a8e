"""The rescoring funnel and the recommendation rule, against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from tandem.bundle.variants import VariantSpec, build_index
from tandem.evaluation.funnel import funnel_search, rescore, sort_hits
from tandem.evaluation.report import pareto_front, recommend
from tandem.evaluation.runner import ResultRow


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return _unit(rng, 500, 64), _unit(rng, 20, 64)


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
    scores, ids = rescore(queries, candidates, docs, k=10)
    assert (ids >= 0).all() and (ids < 45).all()
    _assert_same_topk(ids, scores, exact[:, :45], 10)


def test_rescoring_from_a_score_table_matches_gathering_vectors(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    docs, queries = data
    candidates = np.argsort(-(queries[:, :8] @ docs[:, :8].T), axis=1)[:, :40]  # a lossy first pass
    gathered = rescore(queries, candidates, docs, k=10)
    looked_up = rescore(queries, candidates, docs, k=10, score_table=queries @ docs.T)
    np.testing.assert_array_equal(gathered[1], looked_up[1])
    np.testing.assert_allclose(gathered[0], looked_up[0], rtol=1e-5)


def test_binary_funnel_with_full_oversample_equals_exact_search(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    docs, queries = data
    spec = VariantSpec.parse("bin-64", 64)
    index = build_index(spec, docs)
    scores, ids = funnel_search(spec, index, queries, docs, k=10, oversample=50)  # all 500
    _assert_same_topk(ids, scores, queries @ docs.T, 10)


def test_rescoring_recovers_quality_lost_by_truncation(data: tuple[np.ndarray, np.ndarray]) -> None:
    docs, queries = data
    spec = VariantSpec.parse("f32-16", 64)
    index = build_index(spec, docs)
    truth = np.argsort(-(queries @ docs.T), axis=1)[:, :10]

    def overlap(ids: np.ndarray) -> float:
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])

    _, plain = funnel_search(spec, index, queries, docs, k=10, oversample=None)
    _, rescored = funnel_search(spec, index, queries, docs, k=10, oversample=10)
    assert overlap(rescored) > overlap(plain)


def test_sort_hits_orders_ties_by_id_and_padding_last() -> None:
    scores = np.array([[0.5, 0.9, 0.5, -np.inf]], dtype=np.float32)
    ids = np.array([[7, 3, 2, -1]], dtype=np.int64)
    sorted_scores, sorted_ids = sort_hits(scores, ids)
    assert sorted_ids.tolist() == [[3, 2, 7, -1]]
    assert sorted_scores[0, :3].tolist() == pytest.approx([0.9, 0.5, 0.5])


def _row(
    variant: str, ndcg: float, size: float, latency: float, rescore: bool = False
) -> ResultRow:
    return ResultRow(
        dataset="d", split="test", mode="asymmetric", query_encoder="s", doc_encoder="t",
        variant=variant, rescore=rescore, oversample=4 if rescore else None,
        ndcg_at_10=ndcg, recall_at_100=ndcg, mrr_at_10=ndcg,
        bytes_per_doc=size, latency_ms=latency,
    )  # fmt: skip


def test_recommendation_is_the_smallest_variant_within_tolerance() -> None:
    rows = [
        _row("f32-768", 0.650, 3072, 5.0),
        _row("int8-768", 0.648, 768, 4.0),
        _row("bin-768", 0.600, 96, 3.0),
        _row("bin-768", 0.645, 96, 3.5, rescore=True),
        _row("f32-192", 0.630, 768, 3.0),
    ]
    rec = recommend(rows, tolerance=0.01)
    assert rec is not None and rec.row is rows[3] and rec.reference is rows[0]
    assert recommend(rows, tolerance=0.003).row is rows[1]  # type: ignore[union-attr]
    front = pareto_front(rows, lambda r: r.bytes_per_doc or 0.0)
    assert [r.label for r in front] == ["bin-768 → rescore ×4", "int8-768", "f32-768"]
