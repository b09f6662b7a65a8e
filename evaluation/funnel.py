"""First-pass search on a variant, optionally rescored with the full-dimension float vectors.

This is the serving funnel of DESIGN.md ("Search"), restated here so that
evaluation measures the same candidates the server would: a k-hit request
reads ``k × oversample`` candidates from the (truncated, int8 or binary)
variant, scores them exactly as ``query · stored vector`` at full dimension,
and keeps the best k. Only the index search comes from the indexer; the
rescoring is a few numpy lines that the server's search module may replace.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from tandem.bundle.variants import VariantSpec, search_variant

_RESCORE_CHUNK = 16  # queries per gather: 16 × 1000 candidates × 768 × 4 B ≈ 50 MB at most


def funnel_search(
    spec: VariantSpec,
    index: Any,
    queries: npt.NDArray[np.float32],  # (n, D) full-dim, L2-normalized
    doc_vectors: npt.NDArray[np.floating],  # (n_docs, D) full-dim float16/32, may be a memmap
    k: int,
    oversample: int | None,
    ef_search: int | None = None,
    score_table: npt.NDArray[np.float32] | None = None,  # (n, n_docs) = queries @ doc_vectors.T
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Top-k (scores, ids), best first, -1 padding; ``oversample=None`` means no rescoring.

    ``score_table``, when given, holds the products rescoring would compute,
    so a batch evaluation looks them up instead of gathering vectors.
    """
    if oversample is None:
        scores, ids = search_variant(spec, index, queries, k, ef_search=ef_search)
        return sort_hits(np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64))
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    _, candidates = search_variant(spec, index, queries, k * oversample, ef_search=ef_search)
    return rescore(queries, np.asarray(candidates, dtype=np.int64), doc_vectors, k, score_table)


def rescore(
    queries: npt.NDArray[np.float32],  # (n, D)
    candidates: npt.NDArray[np.int64],  # (n, K) row ids, -1 = none
    doc_vectors: npt.NDArray[np.floating],  # (n_docs, D)
    k: int,
    score_table: npt.NDArray[np.float32] | None = None,  # (n, n_docs), precomputed products
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact inner products of each query with its candidates; best k, ties by ascending id."""
    n = queries.shape[0]
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    for start in range(0, n, _RESCORE_CHUNK):
        cand = candidates[start : start + _RESCORE_CHUNK]  # (c, K)
        valid = cand >= 0
        safe = np.where(valid, cand, 0)
        if score_table is not None:
            scores = np.take_along_axis(score_table[start : start + _RESCORE_CHUNK], safe, axis=1)
        else:
            vecs = np.asarray(doc_vectors[safe], dtype=np.float32)  # (c, K, D)
            scores = np.einsum("ckd,cd->ck", vecs, queries[start : start + _RESCORE_CHUNK])
        scores[~valid] = -np.inf
        order = _order(scores, cand)[:, :k]  # (c, min(K, k))
        top_scores = np.take_along_axis(scores, order, axis=1)
        top_ids = np.where(np.isfinite(top_scores), np.take_along_axis(cand, order, axis=1), -1)
        width = order.shape[1]
        out_scores[start : start + len(cand), :width] = top_scores
        out_ids[start : start + len(cand), :width] = top_ids
    return out_scores, out_ids


def sort_hits(
    scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Best first, ties by ascending id, padding last: the order the server returns.

    Binary scores come from integer Hamming distances, so ties are common and
    their order decides nDCG; fixing it the server's way keeps the two in step.
    """
    order = _order(scores, ids)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _order(scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Row-wise positions by descending score, then ascending id, with -1 ids last."""
    valid = ids >= 0
    keys_id = np.where(valid, ids, np.iinfo(np.int64).max)
    keys_score = np.where(valid, -scores, np.inf)
    return np.lexsort((keys_id, keys_score), axis=1)
