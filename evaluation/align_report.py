"""How well aligned students speak the teacher's space: cosine to the teacher, then retrieval.

Two views of one question. Cosine(student(x), teacher(x)) says how closely a
student reproduces the teacher's vectors; it is read on held-out training texts
(recorded on each card at alignment time) and on the evaluation split's
queries, which no alignment ever trains on. Asymmetric nDCG@10 (student
queries, teacher documents) against teacher-symmetric says what that costs in
results, which is what a user buys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tandem.bundle.format import Bundle
from tandem.evaluation.runner import EvalConfig, EvalResult, run_evaluation
from tandem.models.embedding_cache import EmbeddingCache, encode_cached
from tandem.models.encoder import Encoder
from tandem.models.similarity import mean_cosine

from tandem.data.beir import EvalSet


@dataclass(frozen=True)
class CosineRow:
    """One student's closeness to the teacher; None where a number is undefined."""

    student: str
    method: str  # unaligned, adapter, distill, upstream
    n_texts: int | None
    heldout_query: float | None
    heldout_passage: float | None
    eval_query: float | None
    note: str = ""


@dataclass(frozen=True)
class RetrievalRow:
    """nDCG@10 of one mode on flat exact search at full dimension."""

    mode: str
    query_encoder: str
    ndcg_at_10: float
    of_teacher: float  # ratio to teacher-symmetric


@dataclass(frozen=True)
class AlignReport:
    dataset: str
    split: str
    teacher: str
    n_eval_queries: int
    cosines: list[CosineRow]
    retrieval: list[RetrievalRow]
    evaluation: EvalResult


def cosine_row(student: Encoder, teacher: Encoder, queries: Sequence[str]) -> CosineRow:
    """The card's held-out cosines plus a fresh one on queries no alignment has seen."""
    aligned = student.card.aligned_to
    eval_query, note = None, ""
    if student.dim == teacher.dim:
        predicted = encode_cached(student, queries, "query", EmbeddingCache.for_encoder(student))
        target = encode_cached(teacher, queries, "query", EmbeddingCache.for_encoder(teacher))
        eval_query = mean_cosine(predicted, target)
    else:
        note = f"{student.dim}-d vectors vs the teacher's {teacher.dim}-d: no common space"
    if aligned is None:
        return CosineRow(student.name, "unaligned", None, None, None, eval_query, note)
    held = aligned.heldout_cosine or {}
    return CosineRow(
        student.name,
        aligned.method,
        aligned.n_texts,
        held.get("query"),
        held.get("passage"),
        eval_query,
        note,
    )


def alignment_report(
    eval_set: EvalSet,
    teacher: Encoder,
    students: Sequence[Encoder],
    bundle: Bundle | None = None,
) -> AlignReport:
    """Cosines and full-dimension flat nDCG@10 for the teacher and every student."""
    queries = eval_set.query_texts
    cosines = [cosine_row(s, teacher, queries) for s in students]
    dims = sorted({teacher.dim, *(s.dim for s in students)})
    config = EvalConfig(variants=[f"f32-{d}" for d in dims], oversample=(1,), latency_queries=16)
    result = run_evaluation(eval_set, teacher, students, config, bundle)
    full_dim = {e.name: e.dim for e in (teacher, *students)}
    scored = [
        (r.mode, r.query_encoder, r.ndcg_at_10)
        for r in result.rows
        if r.status == "ok"
        and r.ndcg_at_10 is not None
        and r.variant == f"f32-{full_dim[r.doc_encoder]}"  # not a truncation
    ]
    ceiling = next(ndcg for mode, _, ndcg in scored if mode == "teacher-symmetric")
    retrieval = [RetrievalRow(m, q, ndcg, ndcg / ceiling) for m, q, ndcg in scored]
    return AlignReport(
        eval_set.name, eval_set.split, teacher.name, len(queries), cosines, retrieval, result
    )


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def to_markdown(report: AlignReport, command: str) -> str:
    """The report as Markdown, with the command that reproduces it."""
    env = report.evaluation.environment
    lines = [
        f"# Alignment report: {report.dataset} ({report.split}), teacher {report.teacher}",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        "## Cosine to the teacher",
        "",
        "Mean cosine(student(x), teacher(x)). *Held-out* columns: texts split off before "
        "training (recorded on the student's card). *Eval queries*: the "
        f"{report.n_eval_queries} {report.split} queries, which alignment never trains on.",
        "",
        "| student | method | training texts | held-out query-like | held-out passages | "
        f"{report.split} queries | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report.cosines:
        n = "" if c.n_texts is None else f"{c.n_texts:,}"
        lines.append(
            f"| {c.student} | {c.method} | {n} | {_num(c.heldout_query)} | "
            f"{_num(c.heldout_passage)} | {_num(c.eval_query)} | {c.note} |"
        )
    lines += [
        "",
        f"## Retrieval: nDCG@10 on {report.dataset} {report.split}, flat exact search",
        "",
        "| mode | query encoder | nDCG@10 | × teacher-symmetric |",
        "|---|---|---|---|",
    ]
    for r in report.retrieval:
        lines.append(f"| {r.mode} | {r.query_encoder} | {r.ndcg_at_10:.4f} | {r.of_teacher:.3f} |")
    return "\n".join(lines) + "\n"


def write_markdown(report: AlignReport, out: Path, command: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(report, command))
    return out
