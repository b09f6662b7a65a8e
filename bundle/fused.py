"""Fused search: one student pass, two document spaces, one ranking.

An aligned student yields two vectors per query in one forward pass: its
teacher-space vector (searching the teacher's documents, *asymmetric*) and its
own native vector (searching the bundle's student view, *student*). Each view
gives a first pass on its served variant; the union of both candidate lists is
rescored exactly from the full-precision vectors of both views and ranked by
``w·asym + (1−w)·student``. A document found by only one view still gets both
cosines, so neither space can veto a good candidate of the other.

Filters work as in ``search``: a narrow filter scores every kept document in
both views exactly; a broad one enlarges each first pass. Ties are broken by
ascending id, as everywhere else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from tandem.bundle.search import (
    Ids,
    Ranked,
    Scores,
    SearchPlan,
    SearchTarget,
    score_rows,
    search,
    top_order,
)


@dataclass
class FusedTarget:
    """The two document spaces of one bundle; row i is the same document in both."""

    teacher: SearchTarget
    student: SearchTarget

    def __post_init__(self) -> None:
        if self.teacher.n_docs != self.student.n_docs:
            raise ValueError(
                f"the views disagree: {self.teacher.n_docs} teacher rows, "
                f"{self.student.n_docs} student rows"
            )

    @property
    def n_docs(self) -> int:
        return int(self.teacher.n_docs)


@dataclass(frozen=True)
class FusedPlan:
    """A plan per view (same k, oversample and filter) and the weight of the asymmetric cosine."""

    teacher: SearchPlan
    student_variant: str
    weight: float

    @property
    def student(self) -> SearchPlan:
        return replace(self.teacher, variant=self.student_variant)


def search_fused(
    target: FusedTarget,
    aligned_queries: npt.NDArray[np.float32],  # (n, teacher dim)
    native_queries: npt.NDArray[np.float32],  # (n, student dim)
    plan: FusedPlan,
) -> Ranked:
    """Fused top-k per query: first pass on both views, union, exact rescoring of both."""
    aligned_queries = np.atleast_2d(aligned_queries)
    native_queries = np.atleast_2d(native_queries)
    base = plan.teacher
    started = time.perf_counter()
    stages: list[str] = []
    if base.filter:
        if target.teacher.filter_ids is None:
            raise ValueError("this search target has no metadata to filter on")
        allowed = target.teacher.filter_ids(base.filter)
        stages.append(f"filter:{allowed.size}")
        if allowed.size <= base.filter_exact_max:
            candidates = [allowed] * len(aligned_queries)
            stages.append("exact")
            search_s = time.perf_counter() - started
            return _rescore_union(target, aligned_queries, native_queries, candidates, plan,
                                  stages, search_s)  # fmt: skip
    # Each view's first pass keeps k x oversample candidates (k when not rescoring).
    depth = base.k
    if base.rescore:
        depth = max(base.k, min(base.k * base.oversample, base.max_candidates))
    depth = min(depth, target.n_docs)
    first = replace(base, k=depth, rescore=False)
    teacher_hits = search(target.teacher, aligned_queries, first)
    student_hits = search(
        target.student, native_queries, replace(first, variant=plan.student_variant)
    )
    candidates = [np.union1d(t, s) for t, s in zip(teacher_hits.ids, student_hits.ids, strict=True)]
    stages += [f"first_pass:{base.variant}", f"first_pass:student-{plan.student_variant}"]
    search_s = time.perf_counter() - started
    return _rescore_union(
        target, aligned_queries, native_queries, candidates, plan, stages, search_s
    )


def fused_scores(
    target: FusedTarget,
    aligned_query: npt.NDArray[np.float32],  # (teacher dim,)
    native_query: npt.NDArray[np.float32],  # (student dim,)
    ids: Ids,  # ascending
    weight: float,
    row: int = 0,
) -> Scores:
    """``w·asym + (1−w)·student`` for the given documents, from full-precision vectors.

    ``row`` is the query's row in the targets' ``exact_scores`` tables, when set.
    """
    asym = _exact(target.teacher, aligned_query, ids, row)
    own = _exact(target.student, native_query, ids, row)
    return (weight * asym + (1.0 - weight) * own).astype(np.float32)


def _exact(target: SearchTarget, query: npt.NDArray[np.float32], ids: Ids, row: int) -> Scores:
    if target.exact_scores is not None:
        looked_up: Scores = target.exact_scores[row, ids]
        return looked_up
    read: Scores = score_rows(target.vectors, ids, query[None, :])[0]
    return read


def _rescore_union(
    target: FusedTarget,
    aligned_queries: npt.NDArray[np.float32],
    native_queries: npt.NDArray[np.float32],
    candidates: list[Ids],
    plan: FusedPlan,
    stages: list[str],
    search_s: float,
) -> Ranked:
    started = time.perf_counter()
    out_ids: list[Ids] = []
    out_scores: list[Scores] = []
    for row, cand in enumerate(candidates):
        cand = cand[cand >= 0].astype(np.int64)
        scores = fused_scores(
            target, aligned_queries[row], native_queries[row], cand, plan.weight, row
        )
        order = top_order(scores, cand, plan.teacher.k)
        out_ids.append(cand[order])
        out_scores.append(scores[order])
    stages.append(f"rescore:fused w={plan.weight:g}")
    return Ranked(out_ids, out_scores, stages, True, search_s, time.perf_counter() - started)
