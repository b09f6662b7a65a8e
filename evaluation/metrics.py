"""Ranking metrics through ir-measures (pytrec_eval underneath), never hand-written.

The published reference numbers (BEIR, MTEB) come from pytrec_eval; using the
same implementation means a difference between ours and theirs is a
difference in the system, not in how nDCG treats ties or graded gains.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import ir_measures
import numpy as np
import numpy.typing as npt
from ir_measures import RR, R, nDCG

from tandem.data.beir import Qrels

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]  # query id -> doc id -> score

# Report names -> ir-measures measures. MRR@10 is the mean of RR@10.
MEASURES: Final = {"ndcg@10": nDCG @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10}
# Retrieval depth per metric: @10 metrics are scored on a k=10 request, as a user sees it.
DEPTH: Final = {"ndcg@10": 10, "recall@100": 100, "mrr@10": 10}


def run_from_hits(
    query_ids: Sequence[str],
    ids: npt.NDArray[np.int64],  # (n_queries, k) row ids into doc_ids, best first, -1 = no hit
    doc_ids: Sequence[str],
) -> Run:
    """Turn a search result (rows best first) into an ir-measures run, dropping -1 padding.

    Scores are replaced by ranks (first hit = k, then k-1, ...): pytrec_eval
    re-sorts by score and breaks ties by doc id, which would silently reorder
    tied binary (Hamming) scores; rank scores make it judge the order served.
    """
    run: Run = {}
    for qid, row_ids in zip(query_ids, ids, strict=True):
        hits = [doc_ids[int(i)] for i in row_ids if i >= 0]
        run[qid] = {doc_id: float(len(hits) - rank) for rank, doc_id in enumerate(hits)}
    return run


def per_query(
    qrels: Qrels, run: Run, names: Sequence[str] = tuple(MEASURES)
) -> dict[str, dict[str, float]]:
    """Metric name -> query id -> value, for every judged query (0.0 where the run has nothing)."""
    by_measure = {MEASURES[name]: name for name in names}
    values: dict[str, dict[str, float]] = {name: dict.fromkeys(qrels, 0.0) for name in names}
    for metric in ir_measures.iter_calc(list(by_measure), qrels, run):
        if metric.query_id in qrels:
            values[by_measure[metric.measure]][metric.query_id] = float(metric.value)
    return values


def evaluate(qrels: Qrels, run: Run, names: Sequence[str] = tuple(MEASURES)) -> dict[str, float]:
    """Mean over all judged queries; a query missing from the run counts as 0, never as absent.

    Averaging only over the queries present in the run (pytrec_eval's habit)
    would reward a system for returning nothing on hard queries.
    """
    unknown = [name for name in names if name not in MEASURES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(MEASURES)}")
    values = per_query(qrels, run, names)
    return {name: float(np.mean(list(values[name].values()))) for name in names}
