"""Fused search against a brute-force numpy reference of ``w·asym + (1−w)·student``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from tandem.bundle.fused import FusedPlan, FusedTarget, search_fused
from tandem.bundle.fusion_weight import agreement_curve, choose_weight
from tandem.bundle.search import SearchPlan, SearchTarget
from tandem.bundle.variants import VariantSpec, build_index

N_DOCS, N_QUERIES, K = 400, 16, 10


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def spaces() -> dict[str, np.ndarray]:
    """Two correlated spaces over the same documents, as a teacher and a student would be."""
    rng = np.random.default_rng(7)
    latent = rng.standard_normal((N_DOCS, 24))
    teacher = _unit(
        latent @ rng.standard_normal((24, 64)) + 0.5 * rng.standard_normal((N_DOCS, 64))
    )
    student = _unit(
        latent @ rng.standard_normal((24, 32)) + 0.5 * rng.standard_normal((N_DOCS, 32))
    )
    picks = rng.choice(N_DOCS, N_QUERIES, replace=False)
    aligned = _unit(teacher[picks] + 0.8 * rng.standard_normal((N_QUERIES, 64)))
    native = _unit(student[picks] + 0.8 * rng.standard_normal((N_QUERIES, 32)))
    return {"teacher": teacher, "student": student, "aligned": aligned, "native": native}


def _filter(meta: np.ndarray) -> Any:
    def ids(equals: Mapping[str, Any]) -> np.ndarray:
        return np.flatnonzero(meta == equals["group"]).astype(np.int64)

    return ids


def _target(docs: np.ndarray, name: str, meta: np.ndarray | None = None) -> SearchTarget:
    spec = VariantSpec.parse(name, docs.shape[1])
    filt = _filter(meta) if meta is not None else None
    return SearchTarget(docs, {name: spec}, {name: build_index(spec, docs)}, filt)


def _fused_target(
    s: dict[str, np.ndarray], t_name: str, s_name: str, meta: Any = None
) -> FusedTarget:
    return FusedTarget(_target(s["teacher"], t_name, meta), _target(s["student"], s_name, meta))


def _reference(s: dict[str, np.ndarray], w: float) -> np.ndarray:
    return w * (s["aligned"] @ s["teacher"].T) + (1 - w) * (s["native"] @ s["student"].T)


def _assert_topk(ids: np.ndarray, scores: np.ndarray, exact: np.ndarray, k: int) -> None:
    """Tie-tolerant: returned scores are the exact best k and belong to the returned ids."""
    expected = -np.sort(-exact, axis=1)[:, :k]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(exact, ids, axis=1), scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w", [0.0, 0.4, 1.0])
def test_full_oversample_equals_brute_force(spaces: dict[str, np.ndarray], w: float) -> None:
    plan = FusedPlan(SearchPlan("bin-64", k=K, rescore=True, oversample=N_DOCS), "bin-32", w)
    ranked = search_fused(_fused_target(spaces, "bin-64", "bin-32"), spaces["aligned"],
                          spaces["native"], plan)  # fmt: skip
    scores, ids = ranked.padded(K)
    _assert_topk(ids, scores, _reference(spaces, w), K)
    assert ranked.rescored and ranked.stages[-1] == f"rescore:fused w={w:g}"


def test_union_of_both_first_passes_is_rescored_exactly(spaces: dict[str, np.ndarray]) -> None:
    """Candidates: each view's exact top k×oversample; ranking: exact fused score of the union."""
    w, oversample = 0.4, 3
    plan = FusedPlan(SearchPlan("f32-64", k=K, rescore=True, oversample=oversample), "f32-32", w)
    _, ids = search_fused(_fused_target(spaces, "f32-64", "f32-32"), spaces["aligned"],
                          spaces["native"], plan).padded(K)  # fmt: skip
    asym, own = spaces["aligned"] @ spaces["teacher"].T, spaces["native"] @ spaces["student"].T
    fused = _reference(spaces, w)
    depth = K * oversample
    outside_only = 0
    for row in range(N_QUERIES):
        union = np.union1d(np.argsort(-asym[row])[:depth], np.argsort(-own[row])[:depth])
        best = union[np.lexsort((union, -fused[row, union]))][:K]
        assert ids[row].tolist() == best.tolist()
        in_one = set(np.argsort(-asym[row])[:K]) ^ set(np.argsort(-own[row])[:K])
        outside_only += len(set(best.tolist()) & in_one)
    assert outside_only > 0  # fusion picks documents that only one view ranks in its top k


def test_narrow_filter_scores_every_kept_document(spaces: dict[str, np.ndarray]) -> None:
    meta = np.arange(N_DOCS) % 8  # 50 documents per group
    target = _fused_target(spaces, "bin-64", "bin-32", meta)
    plan = FusedPlan(SearchPlan("bin-64", k=K, rescore=True, filter={"group": 3}), "bin-32", 0.5)
    ranked = search_fused(target, spaces["aligned"], spaces["native"], plan)
    scores, ids = ranked.padded(K)
    keep = np.flatnonzero(meta == 3)
    exact = _reference(spaces, 0.5)[:, keep]
    _assert_topk(np.searchsorted(keep, ids), scores, exact, K)
    assert ranked.stages[:2] == ["filter:50", "exact"]


def test_broad_filter_keeps_only_matching_documents(spaces: dict[str, np.ndarray]) -> None:
    meta = np.arange(N_DOCS) % 2
    target = _fused_target(spaces, "f32-64", "f32-32", meta)
    plan = FusedPlan(
        SearchPlan("f32-64", k=K, rescore=True, oversample=N_DOCS, filter={"group": 1},
                   filter_exact_max=10),
        "f32-32",
        0.3,
    )  # fmt: skip
    scores, ids = search_fused(target, spaces["aligned"], spaces["native"], plan).padded(K)
    assert (meta[ids] == 1).all()
    keep = np.flatnonzero(meta == 1)
    _assert_topk(np.searchsorted(keep, ids), scores, _reference(spaces, 0.3)[:, keep], K)


def test_score_tables_give_the_same_ranking(spaces: dict[str, np.ndarray]) -> None:
    plan = FusedPlan(SearchPlan("bin-64", k=K, rescore=True, oversample=4), "bin-32", 0.4)
    read = search_fused(_fused_target(spaces, "bin-64", "bin-32"), spaces["aligned"],
                        spaces["native"], plan)  # fmt: skip
    tables = _fused_target(spaces, "bin-64", "bin-32")
    tables.teacher.exact_scores = spaces["aligned"] @ spaces["teacher"].T
    tables.student.exact_scores = spaces["native"] @ spaces["student"].T
    looked_up = search_fused(tables, spaces["aligned"], spaces["native"], plan)
    np.testing.assert_array_equal(read.padded(K)[1], looked_up.padded(K)[1])


def test_views_of_different_sizes_are_refused(spaces: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="views disagree"):
        FusedTarget(_target(spaces["teacher"], "f32-64"), _target(spaces["student"][:10], "f32-32"))


def test_label_free_weight_peaks_where_fusion_matches_the_ensemble(
    spaces: dict[str, np.ndarray],
) -> None:
    """With the aligned query equal to the teacher's, the ensemble is exactly w = 0.5."""
    curve = agreement_curve(
        spaces["aligned"], spaces["native"], spaces["aligned"], spaces["teacher"], spaces["student"]
    )
    assert curve[0.5] == pytest.approx(1.0)
    assert curve[0.0] < 1.0 and curve[1.0] < 1.0
    assert choose_weight(curve, N_QUERIES).weight == 0.5
