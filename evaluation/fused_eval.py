"""The fused mode in an evaluation: both document spaces, one student pass per query.

Rows are measured with the search core's ``search_fused`` exactly as the
server runs it: a first pass on one variant of each view (e.g. binary on
both), union, exact rescoring of both cosines, ``w·asym + (1−w)·student``.
``w`` is the aligned student's label-free choice (agreement with the
symmetric ensemble on held-out pseudo-queries, made at alignment time). With
judgments on another split (``train``, never the split being reported), the
``w`` those judgments would pick is reported beside it, for comparison only.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from tandem.bundle.format import STUDENT_VIEW
from tandem.bundle.fused import FusedPlan, FusedTarget, search_fused
from tandem.bundle.fusion_weight import WEIGHT_GRID, fuse
from tandem.bundle.search import SearchTarget
from tandem.bundle.variants import VariantError, VariantSpec
from tandem.evaluation.doc_side import DocSide
from tandem.evaluation.metrics import DEPTH, evaluate, run_from_hits
from tandem.models.encoder import Encoder

from tandem.data.beir import EvalSet

if TYPE_CHECKING:
    from tandem.evaluation.modes import ModePlan
    from tandem.evaluation.runner import Evaluator, ResultRow

logger = logging.getLogger(__name__)

DEFAULT_WEIGHT = 0.5


@dataclass(frozen=True)
class WeightReport:
    """``w`` for one aligned student: the label-free choice and what judgments would pick."""

    student: str
    label_free: float | None
    label_free_agreement: dict[str, float]
    judged_split: str | None = None
    judged: float | None = None
    judged_curve: dict[str, float] | None = None  # w -> nDCG@10 on the judged split


def native_encoder(aligned: Encoder) -> Encoder:
    """The aligned student's second output as an encoder of its own (same ONNX file)."""
    return Encoder(aligned.folder, precision=aligned.precision, output="native")


def label_free_weight(aligned: Encoder) -> float:
    native = aligned.full_card.native
    if native is None or native.fused_weight is None:
        return DEFAULT_WEIGHT
    return float(native.fused_weight)


def student_variant(spec: VariantSpec, teacher_dim: int, student_dim: int) -> str:
    """The student view's counterpart of a teacher variant: same kind, dims scaled."""
    dim = max(1, round(spec.dim * student_dim / teacher_dim))
    return f"{spec.kind}-{dim}" + ("-hnsw" if spec.hnsw else "")


def student_side(evaluator: Evaluator, teacher_docs: DocSide, native: Encoder) -> DocSide:
    """The student's document vectors in the teacher side's row order (row i = same document).

    A bundle's student view by this encoder is used as served; otherwise the
    corpus is embedded (through the cache) and reordered to the teacher's ids.
    """
    key = f"fused:{native.card.fingerprint}:{teacher_docs.encoder.card.fingerprint}"
    cached = evaluator.extra_sides.get(key)
    if cached is not None:
        return cached
    bundle = teacher_docs.bundle
    view = bundle.view(STUDENT_VIEW) if bundle is not None else None
    if view is not None and view.info.fingerprint == native.card.fingerprint:
        logger.info("%s: student documents from the student view of %s", native.name, bundle)
        side = DocSide(native, view.vectors, teacher_docs.doc_ids)
    else:
        own = evaluator.doc_side(native)
        if own.doc_ids == teacher_docs.doc_ids:
            side = own
        else:
            position = {doc_id: i for i, doc_id in enumerate(own.doc_ids)}
            missing = [d for d in teacher_docs.doc_ids if d not in position]
            if missing:
                raise ValueError(
                    f"{len(missing)} documents of the teacher side are not in the corpus, "
                    f"e.g. {missing[:3]}: fused scoring needs both views of every document"
                )
            rows = np.array([position[d] for d in teacher_docs.doc_ids], dtype=np.int64)
            side = DocSide(native, np.asarray(own.vectors)[rows], teacher_docs.doc_ids)
    evaluator.extra_sides[key] = side
    return side


def run_fused(evaluator: Evaluator, plan: ModePlan) -> list[ResultRow]:
    """One row per variant pair and oversample setting, at the label-free ``w``."""
    from tandem.evaluation.runner import _first_pass_is_lossy

    aligned = plan.query_encoder
    native = native_encoder(aligned)
    teacher_docs = evaluator.doc_side(plan.doc_encoder)
    student_docs = student_side(evaluator, teacher_docs, native)
    aligned_q = evaluator.query_vectors(aligned)
    native_q = evaluator.query_vectors(native)
    encode_ms = evaluator.encode_ms(aligned)  # one pass gives both vectors
    weight = label_free_weight(aligned)
    tables = (
        teacher_docs.exact_scores(aligned.card.fingerprint, aligned_q),
        student_docs.exact_scores(native.card.fingerprint, native_q),
    )
    rows: list[ResultRow] = []
    for name in evaluator.config.variants or teacher_docs.variant_names():
        row = evaluator._base_row(plan, name)
        try:
            t_spec = VariantSpec.parse(name, teacher_docs.dim)
            s_spec = VariantSpec.parse(
                student_variant(t_spec, teacher_docs.dim, student_docs.dim), student_docs.dim
            )
        except VariantError as exc:
            row.status, row.note = "n/a", str(exc)
            rows.append(row)
            continue
        t_index, t_bytes = teacher_docs.index(t_spec)
        s_index, s_bytes = student_docs.index(s_spec)
        target = FusedTarget(
            SearchTarget(teacher_docs.vectors, {t_spec.name: t_spec}, {t_spec.name: t_index}),
            SearchTarget(student_docs.vectors, {s_spec.name: s_spec}, {s_spec.name: s_index}),
        )
        lossy = _first_pass_is_lossy(t_spec, teacher_docs.dim)
        # Fused always rescores its union; oversampling only widens each view's first pass.
        settings: list[int] = list(evaluator.config.oversample) if lossy else [1]
        for oversample in settings:
            row = evaluator._base_row(plan, f"{t_spec.name}+student-{s_spec.name}")
            row.rescore, row.oversample = lossy, oversample if lossy else None
            row.bytes_per_doc = t_bytes + s_bytes
            row.encode_ms = encode_ms
            row.weight = weight
            _measure(
                evaluator,
                row,
                target,
                t_spec,
                s_spec,
                aligned_q,
                native_q,
                tables,
                oversample,
                weight,
                student_docs.doc_ids,
            )
            row.latency_ms = encode_ms + (row.search_ms or 0.0)
            rows.append(row)
            logger.info("fused %s w=%.1f: nDCG@10 %.4f", row.label, weight, row.ndcg_at_10)
    return rows


def _measure(
    evaluator: Evaluator,
    row: ResultRow,
    target: FusedTarget,
    t_spec: VariantSpec,
    s_spec: VariantSpec,
    aligned_q: npt.NDArray[np.float32],
    native_q: npt.NDArray[np.float32],
    tables: tuple[Any, Any],
    oversample: int,
    weight: float,
    doc_ids: list[str],
) -> None:
    from tandem.evaluation.runner import faiss_threads, request_plan

    eval_set = evaluator.eval_set
    values: dict[str, float] = {}
    target.teacher.exact_scores, target.student.exact_scores = tables
    for depth in sorted(set(DEPTH.values())):
        names = [name for name, d in DEPTH.items() if d == depth]
        plan = FusedPlan(
            request_plan(t_spec, depth, oversample, evaluator.config.ef_search), s_spec.name, weight
        )
        _, ids = search_fused(target, aligned_q, native_q, plan).padded(depth)
        values.update(
            evaluate(eval_set.qrels, run_from_hits(eval_set.query_ids, ids, doc_ids), names)
        )
    row.ndcg_at_10, row.recall_at_100, row.mrr_at_10 = (
        values["ndcg@10"],
        values["recall@100"],
        values["mrr@10"],
    )
    # Timing: one query at a time, vectors read from storage (no score tables), as served.
    target.teacher.exact_scores = target.student.exact_scores = None
    plan = FusedPlan(
        request_plan(t_spec, 10, oversample, evaluator.config.ef_search), s_spec.name, weight
    )
    times: list[float] = []
    with faiss_threads(evaluator.config.search_threads):
        for n, i in enumerate(evaluator._sample):
            start = time.perf_counter()
            search_fused(target, aligned_q[i : i + 1], native_q[i : i + 1], plan)
            if n >= 3 or len(evaluator._sample) <= 3:
                times.append((time.perf_counter() - start) * 1000)
    row.search_ms = statistics.median(times) if times else 0.0


def judged_weight(
    judged: EvalSet,
    aligned: Encoder,
    teacher_vectors: npt.NDArray[Any],
    teacher_ids: list[str],
    student_vectors: npt.NDArray[Any],
) -> tuple[float, dict[str, float]]:
    """The ``w`` of best exact fused nDCG@10 on another split's judgments, and the curve."""
    from tandem.evaluation.runner import _encode_logged

    native = native_encoder(aligned)
    aligned_q = _encode_logged(aligned, judged.query_texts, "query")
    native_q = _encode_logged(native, judged.query_texts, "query")
    teacher = np.asarray(teacher_vectors, dtype=np.float32)
    student = np.asarray(student_vectors, dtype=np.float32)
    asym = aligned_q @ teacher.T  # (n_queries, n_docs)
    own = native_q @ student.T
    curve: dict[str, float] = {}
    for w in WEIGHT_GRID:
        scores = fuse(asym, own, w)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        run = run_from_hits(judged.query_ids, top, teacher_ids)
        curve[f"{w:.1f}"] = evaluate(judged.qrels, run, ["ndcg@10"])["ndcg@10"]
    best = max(curve, key=lambda w: (round(curve[w], 6), -abs(float(w) - 0.5)))
    return float(best), curve


def weight_report(
    evaluator: Evaluator, aligned: Encoder, teacher: Encoder, judged: EvalSet | None
) -> WeightReport:
    """Label-free ``w`` from the card; with ``judged``, the ``w`` its judgments would pick."""
    native = aligned.full_card.native
    agreement = dict(native.fused_agreement) if native is not None else {}
    report = WeightReport(aligned.name, label_free_weight(aligned), agreement)
    if judged is None:
        return report
    teacher_docs = evaluator.doc_side(teacher)
    student_docs = student_side(evaluator, teacher_docs, native_encoder(aligned))
    best, curve = judged_weight(
        judged, aligned, teacher_docs.vectors, teacher_docs.doc_ids, student_docs.vectors
    )
    logger.info("%s: %s judgments pick w=%.1f (%s)", aligned.name, judged.split, best, curve)
    return WeightReport(aligned.name, report.label_free, agreement, judged.split, best, curve)
