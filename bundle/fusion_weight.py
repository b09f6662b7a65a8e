"""Choosing the fused weight ``w`` without labels: agreement with the symmetric ensemble.

Fused scoring ranks documents by ``w·asym + (1−w)·student`` where ``asym`` is
the aligned query against teacher documents and ``student`` the student's own
query against student documents. The reference is the *symmetric ensemble* of
both models (teacher query · teacher documents + student query · student
documents, halved), which measured better than either model alone. Agreement
with the teacher alone is not used: it rewards fidelity to a teacher that is
not necessarily better and drives ``w`` towards 1.

The same scores are available wherever both encoders embed held-out
pseudo-queries (alignment does this anyway), so the weight costs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

WEIGHT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
AGREEMENT_K = 10
_QUERY_CHUNK = 256

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class WeightChoice:
    """The chosen ``w`` and the agreement of every ``w`` on the grid."""

    weight: float
    agreement: dict[float, float]
    n_queries: int


def fuse(asym: Matrix, student: Matrix, weight: float) -> Matrix:
    """The fused score: ``w·asym + (1−w)·student`` (same shapes in and out)."""
    return (weight * asym + (1.0 - weight) * student).astype(np.float32)


def _top(scores: Matrix, k: int) -> npt.NDArray[np.int64]:
    """Each row's k best columns, as sets (order does not matter for overlap)."""
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k].astype(np.int64)


def _overlap(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> float:
    hits = [np.intersect1d(x, y).size for x, y in zip(a, b, strict=True)]
    return float(np.mean(hits)) / float(a.shape[1])


def agreement_curve(
    aligned_queries: Matrix,  # (n, teacher dim): the student's teacher-space output
    native_queries: Matrix,  # (n, student dim): the student's own output
    teacher_queries: Matrix,  # (n, teacher dim)
    teacher_docs: Matrix,  # (m, teacher dim)
    student_docs: Matrix,  # (m, student dim)
    grid: tuple[float, ...] = WEIGHT_GRID,
    k: int = AGREEMENT_K,
) -> dict[float, float]:
    """Mean top-k overlap of fused rankings with the symmetric-ensemble ranking, per ``w``."""
    totals = dict.fromkeys(grid, 0.0)
    n = len(aligned_queries)
    for start in range(0, n, _QUERY_CHUNK):
        rows = slice(start, start + _QUERY_CHUNK)
        asym = aligned_queries[rows] @ teacher_docs.T  # (chunk, m)
        student = native_queries[rows] @ student_docs.T  # (chunk, m)
        ensemble = 0.5 * (teacher_queries[rows] @ teacher_docs.T + student)
        reference = _top(ensemble.astype(np.float32), k)
        for w in grid:
            totals[w] += _overlap(_top(fuse(asym, student, w), k), reference) * len(asym)
    return {w: totals[w] / max(n, 1) for w in grid}


def choose_weight(agreement: dict[float, float], n_queries: int) -> WeightChoice:
    """The ``w`` of highest agreement; ties go to the ``w`` nearest an even mix."""
    best = max(agreement, key=lambda w: (round(agreement[w], 6), -abs(w - 0.5)))
    return WeightChoice(best, agreement, n_queries)


def label_free_weight(
    aligned_queries: Matrix,
    native_queries: Matrix,
    teacher_queries: Matrix,
    teacher_docs: Matrix,
    student_docs: Matrix,
) -> WeightChoice:
    """Pick ``w`` by agreement with the symmetric ensemble on (held-out) queries."""
    curve = agreement_curve(
        aligned_queries, native_queries, teacher_queries, teacher_docs, student_docs
    )
    return choose_weight(curve, len(aligned_queries))
