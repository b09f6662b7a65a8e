"""The search core: first pass on a variant, optional exact rescoring, top-k, filters.

One ranking rule for everything that searches a bundle: the server's
requests, evaluation's runs and the benchmarks all call ``search``, so a
tie-break or a candidate count cannot drift between them. A first pass on a
compressed variant (binary codes, int8, truncated dims, a graph) is cheap but
approximate; rescoring its ``k x oversample`` best candidates with the stored
full-dimension vectors and the float query recovers most of the exact
ranking. Metadata filters that match few documents are scored exactly over
just those documents; broad filters enlarge the first pass instead.

Results are internal row ids: fetching documents is the caller's business
(the server fetches a whole micro-batch at once; evaluation never needs them).
Ties are broken by ascending id, so results are deterministic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from tandem.bundle.variants import VariantSpec, search_variant

SCORE_CHUNK = 4096  # rows of stored vectors scored at once (12 MiB of float32 at 768 dims)

Ids = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SearchPlan:
    """What to run for a group of queries; resolved from a request and the defaults."""

    variant: str
    k: int
    rescore: bool
    oversample: int = 4
    ef_search: int = 64
    filter: dict[str, Any] | None = None
    filter_exact_max: int = 2048
    max_candidates: int = 10_000


@dataclass
class SearchTarget:
    """What a search runs against: the served variants and the full-dimension vectors.

    ``vectors`` are the stored rows (a bundle's float16 memmap, or any array);
    ``filter_ids`` maps a metadata filter to the sorted ids it keeps (None:
    this target cannot filter). ``exact_scores``, when set, holds every
    ``query · vector`` product already (evaluation computes them once for all
    variants), so rescoring looks them up instead of reading vectors.
    """

    vectors: npt.NDArray[Any]
    specs: Mapping[str, VariantSpec]
    indexes: Mapping[str, Any]
    filter_ids: Callable[[dict[str, Any]], Ids] | None = None
    exact_scores: Scores | None = field(default=None, repr=False)

    @property
    def n_docs(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclass(frozen=True)
class Ranked:
    """Per query, the best internal ids and their scores, best first."""

    ids: list[Ids]
    scores: list[Scores]
    stages: list[str]
    rescored: bool
    search_s: float
    rescore_s: float
    remote_s: float = 0.0  # of which spent in a remote index tier (Milvus); 0 in-process

    def padded(self, k: int) -> tuple[Scores, Ids]:
        """(n, k) arrays with -inf / -1 where a query has fewer than k hits."""
        scores = np.full((len(self.ids), k), -np.inf, dtype=np.float32)
        ids = np.full((len(self.ids), k), -1, dtype=np.int64)
        for row, (row_ids, row_scores) in enumerate(zip(self.ids, self.scores, strict=True)):
            n = min(k, row_ids.size)
            ids[row, :n], scores[row, :n] = row_ids[:n], row_scores[:n]
        return scores, ids


def search(target: SearchTarget, queries: npt.NDArray[np.float32], plan: SearchPlan) -> Ranked:
    """Search every query (n, dim), full-dimension and L2-normalized, with one plan."""
    queries = np.atleast_2d(queries)
    stages: list[str] = []
    started = time.perf_counter()
    allowed: Ids | None = None
    if plan.filter:
        if target.filter_ids is None:
            raise ValueError("this search target has no metadata to filter on")
        allowed = target.filter_ids(plan.filter)
        stages.append(f"filter:{allowed.size}")
        if allowed.size == 0:
            empty = [np.empty(0, np.int64) for _ in queries]
            scores = [np.empty(0, np.float32) for _ in queries]
            return Ranked(empty, scores, stages, False, _since(started), 0.0)
        if allowed.size <= plan.filter_exact_max:
            ids, top = _exact_subset(target, queries, allowed, plan.k)
            stages.append("exact")
            return Ranked(ids, top, stages, True, _since(started), 0.0)

    spec = target.specs[plan.variant]
    index = target.indexes[plan.variant]
    n_docs = target.n_docs
    # Rescoring reads k x oversample stored vectors per query: capped, but never below k.
    want = plan.k
    if plan.rescore:
        want = max(plan.k, min(plan.k * plan.oversample, plan.max_candidates))
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
        first_scores, first_ids = search_variant(spec, index, queries, k_first, ef)
        if allowed is None:
            break
        first_ids = np.where(np.isin(first_ids, allowed), first_ids, np.int64(-1))
        # Post-filtering can leave too few candidates: widen the first pass and retry.
        if k_first >= n_docs or int((first_ids >= 0).sum(axis=1).min()) >= want:
            break
        k_first = min(n_docs, k_first * 4)
    stages.append(f"first_pass:{plan.variant}")
    search_s = _since(started)

    if not plan.rescore:
        ids, top = keep_top(first_ids, first_scores, plan.k)
        return Ranked(ids, top, stages, False, search_s, 0.0)
    started = time.perf_counter()
    ids, top = rescore(target, queries, first_ids, plan.k)
    stages.append(f"rescore:f32-{target.dim}")
    return Ranked(ids, top, stages, True, search_s, _since(started))


def rescore(
    target: SearchTarget, queries: npt.NDArray[np.float32], candidates: Ids, k: int
) -> tuple[list[Ids], list[Scores]]:
    """Each query's candidates (n, m; -1 = none) ranked by exact inner product; the best k."""
    out_ids, out_scores = [], []
    for row, (query, cand_row) in enumerate(zip(queries, candidates, strict=True)):
        cand = np.unique(cand_row[cand_row >= 0])  # sorted: reads the memmap in file order
        if target.exact_scores is not None:
            scores = target.exact_scores[row, cand]
        else:
            scores = score_rows(target.vectors, cand, query[None, :])[0]
        order = top_order(scores, cand, k)
        out_ids.append(cand[order])
        out_scores.append(scores[order])
    return out_ids, out_scores


def score_rows(vectors: npt.NDArray[Any], ids: Ids, queries: npt.NDArray[np.float32]) -> Scores:
    """Inner products of queries with stored rows ``ids`` (ascending), read chunk by chunk.

    Only one chunk of float32 rows is in memory at a time, whatever the number
    of candidates: the memmap may be float16 and far larger than RAM.
    """
    scores = np.empty((queries.shape[0], ids.size), dtype=np.float32)  # (n_queries, m)
    for start in range(0, ids.size, SCORE_CHUNK):
        rows = np.asarray(vectors[ids[start : start + SCORE_CHUNK]], dtype=np.float32)
        scores[:, start : start + rows.shape[0]] = queries @ rows.T
    return scores


def keep_top(ids: Ids, scores: Scores, k: int) -> tuple[list[Ids], list[Scores]]:
    """First-pass hits as they are: drop padding, best k per row, ties by ascending id."""
    out_ids, out_scores = [], []
    for row_ids, row_scores in zip(ids, scores, strict=True):
        valid = row_ids >= 0
        row_ids, row_scores = row_ids[valid], row_scores[valid]
        order = np.lexsort((row_ids, -row_scores))[:k]
        out_ids.append(row_ids[order])
        out_scores.append(row_scores[order])
    return out_ids, out_scores


def top_order(scores: Scores, ids: Ids, k: int) -> npt.NDArray[np.intp]:
    """Positions of the k best scores, ties broken by ascending id."""
    if scores.size > 4 * k:
        # Keep everything tied with the k-th score so the tie-break stays exact.
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        keep = np.flatnonzero(scores >= kth)
    else:
        keep = np.arange(scores.size)
    order = np.lexsort((ids[keep], -scores[keep]))[:k]
    return keep[order]


def _exact_subset(
    target: SearchTarget, queries: npt.NDArray[np.float32], allowed: Ids, k: int
) -> tuple[list[Ids], list[Scores]]:
    if target.exact_scores is not None:
        all_scores = target.exact_scores[:, allowed]
    else:
        all_scores = score_rows(target.vectors, allowed, queries)  # (n_queries, m)
    out_ids, out_scores = [], []
    for row in all_scores:
        order = top_order(row, allowed, k)
        out_ids.append(allowed[order])
        out_scores.append(row[order])
    return out_ids, out_scores


def _since(started: float) -> float:
    return time.perf_counter() - started
