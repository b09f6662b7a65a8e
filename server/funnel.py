"""The retrieval funnel: first pass on a variant, optional full-precision rescoring.

Runs in a worker thread (FAISS and numpy release the GIL). A first pass on a
compressed variant (binary codes, int8, truncated dims, a graph) is cheap but
approximate; rescoring its ``k x oversample`` best candidates with the stored
full-dimension vectors and the float query recovers most of the exact
ranking at a fraction of the exact cost. Metadata filters that match few
documents are scored exactly over just those documents; broad filters are
applied to an enlarged first pass instead.

Ties are broken by internal id, so results are deterministic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tandem.bundle.format import Document
from tandem.bundle.variants import search_variant
from tandem.server.state import LoadedBundle

SCORE_CHUNK = 4096  # rows of stored vectors scored at once (12 MiB of float32 at 768 dims)


@dataclass(frozen=True)
class SearchPlan:
    """What to run for a group of queries; resolved from a request and the defaults."""

    variant: str
    k: int
    rescore: bool
    oversample: int
    ef_search: int
    filter: dict[str, Any] | None
    filter_exact_max: int
    max_candidates: int = 10_000


@dataclass(frozen=True)
class FunnelResult:
    hits: list[list[tuple[Document, float]]]  # per query, best first
    stages: list[str]
    rescored: bool
    search_s: float
    rescore_s: float


def run_funnel(
    loaded: LoadedBundle, queries: npt.NDArray[np.float32], plan: SearchPlan
) -> FunnelResult:
    """Search every query (n, dim) with one plan; documents are fetched for the hits."""
    allowed: npt.NDArray[np.int64] | None = None
    stages: list[str] = []
    started = time.perf_counter()
    if plan.filter:
        allowed = loaded.bundle.filter_ids(plan.filter)
        stages.append(f"filter:{allowed.size}")
        if allowed.size == 0:
            return FunnelResult([[] for _ in queries], stages, False, _since(started), 0.0)
        if allowed.size <= plan.filter_exact_max:
            hit_ids, hit_scores = _exact_subset(loaded, queries, allowed, plan.k)
            stages.append("exact")
            return _with_docs(loaded, hit_ids, hit_scores, stages, True, _since(started), 0.0)

    spec = loaded.specs[plan.variant]
    n_docs = loaded.n_docs
    # Rescoring reads k x oversample stored vectors per query: capped, but never below k.
    want = (
        max(plan.k, min(plan.k * plan.oversample, plan.max_candidates)) if plan.rescore else plan.k
    )
    want = min(want, n_docs)
    k_first = want
    if allowed is not None:
        # A broad filter keeps a fraction of the docs: enlarge the first pass accordingly.
        k_first *= math.ceil(n_docs / allowed.size)
    k_first = max(1, min(k_first, n_docs))
    if allowed is not None:
        want = min(want, int(allowed.size))
    while True:
        ef = max(plan.ef_search, k_first) if spec.hnsw else None
        scores, ids = search_variant(spec, loaded.indexes[plan.variant], queries, k_first, ef)
        if allowed is None:
            break
        ids = np.where(np.isin(ids, allowed), ids, np.int64(-1))  # (n_queries, k_first)
        # Post-filtering can leave too few candidates: widen the first pass and retry.
        if k_first >= n_docs or int((ids >= 0).sum(axis=1).min()) >= want:
            break
        k_first = min(n_docs, k_first * 4)
    stages.append(f"first_pass:{plan.variant}")
    search_s = _since(started)

    rescore_s = 0.0
    if plan.rescore:
        started = time.perf_counter()
        hit_ids, hit_scores = rescore(loaded.bundle.vectors, queries, ids, plan.k)
        rescore_s = _since(started)
        stages.append(f"rescore:f32-{loaded.dim}")
    else:
        hit_ids, hit_scores = _keep_top(ids, scores, plan.k)
    return _with_docs(loaded, hit_ids, hit_scores, stages, plan.rescore, search_s, rescore_s)


def _exact_subset(
    loaded: LoadedBundle,
    queries: npt.NDArray[np.float32],
    allowed: npt.NDArray[np.int64],
    k: int,
) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.float32]]]:
    all_scores = score_rows(loaded.bundle.vectors, allowed, queries)  # (n_queries, m)
    out_ids, out_scores = [], []
    for row in all_scores:
        order = _top_order(row, allowed, k)
        out_ids.append(allowed[order])
        out_scores.append(row[order])
    return out_ids, out_scores


def score_rows(
    vectors: npt.NDArray[Any], ids: npt.NDArray[np.int64], queries: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Inner products of queries with stored rows ``ids`` (ascending), read chunk by chunk.

    Only one chunk of float32 rows is in memory at a time, whatever the number
    of candidates: the memmap may be float16 and far larger than RAM.
    """
    scores = np.empty((queries.shape[0], ids.size), dtype=np.float32)  # (n_queries, m)
    for start in range(0, ids.size, SCORE_CHUNK):
        rows = np.asarray(vectors[ids[start : start + SCORE_CHUNK]], dtype=np.float32)
        scores[:, start : start + rows.shape[0]] = queries @ rows.T
    return scores


def rescore(
    vectors: npt.NDArray[Any],
    queries: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    k: int,
) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.float32]]]:
    """Each query's first-pass candidates ``ids`` (n_queries, m) ranked exactly; the best k.

    ``vectors`` are the stored full-dimension rows (a bundle's memmap); public
    so benchmarks time the server's own rescoring, not a copy of it.
    """
    out_ids, out_scores = [], []
    for query, row in zip(queries, ids, strict=True):
        cand = np.unique(row[row >= 0])  # sorted: reads the memmap in file order
        scores = score_rows(vectors, cand, query[None, :])[0]  # (m,)
        order = _top_order(scores, cand, k)
        out_ids.append(cand[order])
        out_scores.append(scores[order])
    return out_ids, out_scores


def _keep_top(
    ids: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], k: int
) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.float32]]]:
    out_ids, out_scores = [], []
    for row_ids, row_scores in zip(ids, scores, strict=True):
        valid = row_ids >= 0
        row_ids, row_scores = row_ids[valid], row_scores[valid]
        order = np.lexsort((row_ids, -row_scores))[:k]
        out_ids.append(row_ids[order])
        out_scores.append(row_scores[order])
    return out_ids, out_scores


def _top_order(
    scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.intp]:
    """Positions of the k best scores, ties broken by ascending id."""
    if scores.size > 4 * k:
        # Keep everything tied with the k-th score so the tie-break stays exact.
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        keep = np.flatnonzero(scores >= kth)
    else:
        keep = np.arange(scores.size)
    order = np.lexsort((ids[keep], -scores[keep]))[:k]
    return keep[order]


def _with_docs(
    loaded: LoadedBundle,
    ids: list[npt.NDArray[np.int64]],
    scores: list[npt.NDArray[np.float32]],
    stages: list[str],
    rescored: bool,
    search_s: float,
    rescore_s: float,
) -> FunnelResult:
    flat = [int(i) for row in ids for i in row]
    docs = loaded.bundle.documents(flat) if flat else []
    hits: list[list[tuple[Document, float]]] = []
    pos = 0
    for row_ids, row_scores in zip(ids, scores, strict=True):
        n = len(row_ids)
        hits.append(list(zip(docs[pos : pos + n], (float(s) for s in row_scores), strict=True)))
        pos += n
    return FunnelResult(hits, stages, rescored, search_s, rescore_s)


def _since(started: float) -> float:
    return time.perf_counter() - started
