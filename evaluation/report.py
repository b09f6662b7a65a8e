"""results.csv, report.md and the two Pareto plots, plus the rule that picks a recommended variant.

The report is written to be committed (docs/eval/<dataset>): everything a
reader needs to judge the numbers is in it, i.e. the reference numbers beside
ours, how each column was measured, and on what machine.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from tandem.evaluation.modes import MODES
from tandem.evaluation.references import TOLERANCE, published_ndcg10
from tandem.evaluation.runner import NOT_TRAINED, EvalResult, ResultRow

logger = logging.getLogger(__name__)

CSV_FILE = "results.csv"
REPORT_FILE = "report.md"
BYTES_PLOT = "ndcg_vs_bytes.png"
LATENCY_PLOT = "ndcg_vs_latency.png"
QUALITY_TOLERANCE = 0.01  # nDCG@10 a recommended variant may give up against exact search


@dataclass(frozen=True)
class Recommendation:
    row: ResultRow
    reference: ResultRow
    tolerance: float

    def describe(self) -> str:
        return (
            f"{self.row.mode} / {self.row.label}: nDCG@10 {self.row.ndcg_at_10:.4f} "
            f"(exact {self.reference.label}: {self.reference.ndcg_at_10:.4f}), "
            f"{_bytes(self.row.bytes_per_doc)}/doc, {self.row.latency_ms:.1f} ms/query"
        )


def _ndcg(row: ResultRow) -> float:
    return row.ndcg_at_10 if row.ndcg_at_10 is not None else math.nan


def ok_rows(rows: Sequence[ResultRow]) -> list[ResultRow]:
    return [r for r in rows if r.status == "ok" and r.ndcg_at_10 is not None]


def serving_mode(rows: Sequence[ResultRow]) -> str | None:
    """The mode tandem would serve: asymmetric when an aligned student was measured."""
    modes = {r.mode for r in ok_rows(rows)}
    for mode in ("asymmetric", "teacher-symmetric", "student-symmetric"):
        if mode in modes:
            return mode
    return None


def recommend(
    rows: Sequence[ResultRow], tolerance: float = QUALITY_TOLERANCE
) -> Recommendation | None:
    """Smallest index within ``tolerance`` nDCG@10 of exact float search (then best, then fastest).

    Restricted to the serving mode, because the point of a variant is to
    shrink what that mode serves; the reference is its best exact full-dim
    float row (no rescoring), so "within tolerance" means "as good as not
    compressing at all".
    """
    mode = serving_mode(rows)
    if mode is None:
        return None
    pool = [r for r in ok_rows(rows) if r.mode == mode]
    exact = [
        r
        for r in pool
        if r.variant.startswith("f32-") and "hnsw" not in r.variant and not r.rescore
    ]
    full = max((int(r.variant.split("-")[1]) for r in exact), default=0)
    exact = [r for r in exact if r.variant == f"f32-{full}"] or pool
    reference = max(exact, key=lambda r: r.ndcg_at_10 or 0.0)
    floor = (reference.ndcg_at_10 or 0.0) - tolerance
    good = [r for r in pool if (r.ndcg_at_10 or 0.0) >= floor - 1e-12]
    best = min(
        good,
        key=lambda r: (r.bytes_per_doc or math.inf, -_ndcg(r), r.latency_ms or math.inf),
    )
    return Recommendation(best, reference, tolerance)


def pareto_front(rows: Sequence[ResultRow], cost: Callable[[ResultRow], float]) -> list[ResultRow]:
    """Rows no other row beats on both cost (lower) and nDCG@10 (higher), by increasing cost."""
    front: list[ResultRow] = []
    best = -math.inf
    for row in sorted(rows, key=lambda r: (cost(r), -(r.ndcg_at_10 or 0.0))):
        if (row.ndcg_at_10 or 0.0) > best:
            front.append(row)
            best = row.ndcg_at_10 or 0.0
    return front


def write_csv(rows: Sequence[ResultRow], path: Path) -> None:
    names = [f.name for f in fields(ResultRow)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["label", *names])
        writer.writeheader()
        for row in rows:
            data = row.as_dict()
            writer.writerow({"label": row.label, **{k: _csv_value(data[k]) for k in names}})


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_plots(
    rows: Sequence[ResultRow], out: Path, recommendation: Recommendation | None, title: str = ""
) -> list[Path]:
    """nDCG@10 against index bytes/doc and against query latency, one Pareto front per group.

    A group is a mode with its query encoder (two aligned students are two
    fronts). Only front points are labelled, and a label is dropped when it
    would sit on top of one already drawn.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    points = ok_rows(rows)
    groups = list(dict.fromkeys((r.mode, r.query_encoder) for r in points))
    groups.sort(key=lambda g: MODES.index(g[0]))
    colors = [plt.get_cmap("tab10")(i) for i in range(10)]
    written: list[Path] = []
    axes_specs: list[tuple[str, str, Callable[[ResultRow], float]]] = [
        (BYTES_PLOT, "index bytes per document (log scale)", lambda r: r.bytes_per_doc or math.nan),
        (
            LATENCY_PLOT,
            "query latency = encode + search, median ms (log scale)",
            lambda r: r.latency_ms or math.nan,
        ),
    ]
    for filename, xlabel, cost in axes_specs:
        fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
        placed = _LabelPlacer(points, cost)
        for color, (mode, encoder) in zip(colors, groups, strict=False):
            group = [r for r in points if (r.mode, r.query_encoder) == (mode, encoder)]
            group = [r for r in group if math.isfinite(cost(r))]
            xs, ys = [cost(r) for r in group], [_ndcg(r) for r in group]
            ax.scatter(xs, ys, color=color, alpha=0.3, s=16)
            front = pareto_front(group, cost)
            ax.plot(
                [cost(r) for r in front],
                [_ndcg(r) for r in front],
                "-o",
                color=color,
                markersize=4,
                label=f"{mode}, queries by {encoder} (Pareto front)",
            )
            for r in front:
                if placed.take(cost(r), r.ndcg_at_10 or 0.0):
                    ax.annotate(
                        r.label,
                        (cost(r), r.ndcg_at_10 or 0.0),
                        fontsize=6.5,
                        color=color,
                        xytext=(4, 3),
                        textcoords="offset points",
                    )
        if recommendation is not None:
            r = recommendation.row
            ax.scatter(
                [cost(r)],
                [_ndcg(r)],
                marker="*",
                s=260,
                color="gold",
                edgecolor="black",
                zorder=5,
                label=f"recommended: {r.mode} {r.label}",
            )
        if title:
            ax.set_title(title, fontsize=10)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda _v, _pos: ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("nDCG@10")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


class _LabelPlacer:
    """Refuses a label closer than ``gap`` (fraction of the axes) to one already placed."""

    def __init__(
        self, rows: Sequence[ResultRow], cost: Callable[[ResultRow], float], gap: float = 0.035
    ) -> None:
        xs = [math.log10(c) for r in rows if (c := cost(r)) > 0 and math.isfinite(c)]
        ys = [r.ndcg_at_10 or 0.0 for r in rows]
        self.x0, self.dx = (min(xs), (max(xs) - min(xs)) or 1.0) if xs else (0.0, 1.0)
        self.y0, self.dy = (min(ys), (max(ys) - min(ys)) or 1.0) if ys else (0.0, 1.0)
        self.gap = gap
        self.taken: list[tuple[float, float]] = []

    def take(self, x: float, y: float) -> bool:
        if x <= 0 or not math.isfinite(x):
            return False
        point = ((math.log10(x) - self.x0) / self.dx, (y - self.y0) / self.dy)
        if any(
            abs(point[0] - a) < 3 * self.gap and abs(point[1] - b) < self.gap for a, b in self.taken
        ):
            return False
        self.taken.append(point)
        return True


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} B" if value >= 10 else f"{value:.1f} B"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def reference_lines(result: EvalResult) -> list[str]:
    """Ours beside published numbers for the symmetric exact rows, with a pass/fail mark."""
    lines = [
        f"| mode | model | nDCG@10 (ours) | published | Δ | within ±{TOLERANCE:.2f} |",
        "|---|---|---:|---:|---:|:---:|",
    ]
    found = False
    for row in ok_rows(result.rows):
        published = published_ndcg10(result.dataset, row.doc_encoder, result.split)
        if row.published_ndcg_at_10 is None or published is None:
            continue
        found = True
        delta = round((row.ndcg_at_10 or 0.0) - row.published_ndcg_at_10, 4) + 0.0  # no "-0"
        mark = "yes" if abs(delta) <= TOLERANCE else "**NO**"
        lines.append(
            f"| {row.mode} | {row.doc_encoder} | {row.ndcg_at_10:.4f} | "
            f"{row.published_ndcg_at_10:.4f} ({published[1]}) | {delta:+.4f} | {mark} |"
        )
    if not found:
        return ["No published number is known for these models on this dataset and split."]
    return lines


def results_lines(rows: Sequence[ResultRow], recommended: ResultRow | None) -> list[str]:
    lines: list[str] = []
    for mode in MODES:
        mode_rows = [r for r in rows if r.mode == mode]
        if not mode_rows:
            continue
        encoders = sorted({(r.query_encoder, r.doc_encoder) for r in mode_rows})
        for query_encoder, doc_encoder in encoders:
            group = [
                r
                for r in mode_rows
                if (r.query_encoder, r.doc_encoder) == (query_encoder, doc_encoder)
            ]
            lines.append(f"### {mode}: queries by {query_encoder}, documents by {doc_encoder}")
            lines.append("")
            na = [r for r in group if r.status != "ok"]
            okr = [r for r in group if r.status == "ok"]
            if okr:
                lines += [
                    "| variant | nDCG@10 | Recall@100 | MRR@10 | index bytes/doc "
                    "| encode ms | search ms | latency ms |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|",
                ]
                for r in okr:
                    label = f"**{r.label}** ★" if r is recommended else r.label
                    if r.note:
                        label += (
                            " (not trained for it)" if r.note == NOT_TRAINED else f" ({r.note})"
                        )
                    cells = [
                        label,
                        _num(r.ndcg_at_10),
                        _num(r.recall_at_100),
                        _num(r.mrr_at_10),
                        _bytes(r.bytes_per_doc),
                        _num(r.encode_ms, 2),
                        _num(r.search_ms, 3),
                        _num(r.latency_ms, 2),
                    ]
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
            for r in na:
                what = "mode" if r.variant == "-" else f"variant {r.variant}"
                lines.append(f"- {what} not applicable: {r.note}")
            if na:
                lines.append("")
    return lines


def fused_lines(result: EvalResult) -> list[str]:
    """The four modes side by side (best row of each) and the fused weights."""
    rows = ok_rows(result.rows)
    if not any(r.mode == "fused" for r in rows):
        return []
    teacher = [
        r
        for r in rows
        if r.mode == "teacher-symmetric"
        and r.variant.startswith("f32-")
        and "hnsw" not in r.variant
        and not r.rescore
    ]
    base = teacher[0].ndcg_at_10 if teacher and teacher[0].ndcg_at_10 else None
    lines = [
        "## Modes at a glance",
        "",
        "Per mode and query encoder: exact full-dimension float search, and the smallest "
        "funnel (binary first pass, rescored) for comparison. Fused rows count both views' "
        "index bytes; each view's rescoring also reads its full-precision vectors from disk.",
        "",
        "| mode | queries | variant | nDCG@10 | × teacher | Recall@100 | index bytes/doc "
        "| p50 ms | w |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    groups = list(dict.fromkeys((r.mode, r.query_encoder) for r in rows))
    for mode, encoder in groups:
        if mode == "asymmetric-unaligned":
            continue
        group = [r for r in rows if (r.mode, r.query_encoder) == (mode, encoder)]
        exact = [
            r
            for r in group
            if r.variant.startswith("f32-") and "hnsw" not in r.variant and not r.rescore
        ]
        binary = [
            r
            for r in group
            if r.variant.startswith("bin-") and "hnsw" not in r.variant and r.rescore
        ]
        picks = exact[:1] + sorted(binary, key=lambda r: -_ndcg(r))[:1]
        for r in picks:
            ratio = f"{_ndcg(r) / base:.3f}" if base else "–"
            weight = "" if r.weight is None else f"{r.weight:.1f}"
            lines.append(
                f"| {mode} | {encoder} | {r.label} | {_num(r.ndcg_at_10)} | {ratio} | "
                f"{_num(r.recall_at_100)} | {_bytes(r.bytes_per_doc)} | {_num(r.latency_ms, 2)} "
                f"| {weight} |"
            )
    lines.append("")
    for w in result.weights:
        agreement = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(w.label_free_agreement.items()))
        lines.append(
            f"- **{w.student}**: label-free w = {w.label_free} (top-10 agreement with the "
            f"symmetric ensemble on held-out pseudo-queries: {agreement or 'not recorded'})."
        )
        if w.judged is not None and w.judged_curve is not None:
            curve = ", ".join(f"{k}: {v:.4f}" for k, v in sorted(w.judged_curve.items()))
            lines.append(
                f"  The {w.judged_split} split's judgments would pick w = {w.judged} "
                f"(exact fused nDCG@10 on {w.judged_split}: {curve}); shown for comparison, "
                "never used to choose the served w."
            )
    lines.append("")
    return lines


def write_markdown(
    result: EvalResult,
    path: Path,
    recommendation: Recommendation | None,
    command: str | None,
    plots: Sequence[Path],
) -> None:
    first = ok_rows(result.rows)[:1]
    n_queries = first[0].n_queries if first else (result.rows[0].n_queries if result.rows else 0)
    n_docs = first[0].n_docs if first else (result.rows[0].n_docs if result.rows else 0)
    env = result.environment
    cfg = result.config
    lines = [
        f"# Retrieval quality: {result.dataset} ({result.split} split)",
        "",
        f"Teacher **{result.teacher}**; students: {', '.join(result.students) or 'none'}. "
        f"{n_queries} {result.split} queries against {n_docs:,} documents.",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {env.get('platform', '?')}, "
        f"{env.get('cpus', '?')} CPUs ({env.get('processor', '?')}), "
        f"faiss {env.get('faiss', '?')}.",
    ]
    if command:
        lines += ["", "```", command, "```"]
    if result.encoders:
        lines += ["", *[f"- **{name}**: {what}" for name, what in result.encoders.items()]]
    lines += ["", "## Against published numbers", "", *reference_lines(result), ""]
    lines += ["## Recommended variant", ""]
    if recommendation is None:
        lines.append("None: no mode produced results.")
    else:
        lines += [
            f"**{recommendation.describe()}**",
            "",
            f"Rule: in the serving mode ({recommendation.row.mode}), the smallest index per "
            "document (then the higher nDCG@10, then the lower latency) whose nDCG@10 is within "
            f"{recommendation.tolerance:.2f} of exact full-dimension float search. Rescoring "
            "variants also read the full-dimension "
            "vectors of their candidates from the bundle's memory-mapped vector file (on disk, "
            "not counted in index bytes).",
        ]
    lines += ["", *fused_lines(result)]
    lines += ["", "## Quality against cost", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += [
        "",
        "## Results",
        "",
        *results_lines(result.rows, recommendation.row if recommendation else None),
    ]
    lines += [
        "## How these numbers were measured",
        "",
        "- Metrics: ir-measures (pytrec_eval), averaged over every judged query of the split "
        "(a query with no hit counts 0). nDCG@10 and MRR@10 (RR@10) are scored on a k=10 request, "
        "Recall@100 on a k=100 request, each as the server would answer it.",
        "- Rescoring (`→ rescore ×N`): the variant returns k×N candidates, which are rescored by "
        "the inner product of the full-dimension float query and stored vectors; top k kept.",
        "- Variants are built from the cached document vectors; truncated vectors are "
        "re-normalized. A truncation the teacher's card does not list as a Matryoshka "
        "dimension is marked *not trained for it*: the model was never taught to keep its "
        "meaning in the first dimensions. "
        f"Oversampling factors: {', '.join(map(str, cfg.oversample))}"
        + (
            f"; HNSW efSearch {cfg.ef_search}."
            if cfg.ef_search
            else "; HNSW efSearch: index default."
        ),
        "- Index bytes/doc: the serialized FAISS index divided by the number of documents "
        "(graph links included for HNSW).",
        f"- encode ms: median time to embed one query alone (batch of one, after warm-up) over the "
        f"first {cfg.latency_queries} queries; search ms: median of one-query k=10 requests "
        f"including rescoring, FAISS on {cfg.search_threads} thread(s); latency = encode + "
        "search. Timings are from this machine only.",
        '- Documents are embedded as `(title + " " + text).strip()`, truncated at each model\'s '
        "max length; embeddings come from the content-addressed cache.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def write_report(
    result: EvalResult, out: Path, command: str | None = None
) -> Recommendation | None:
    """Write results.csv, the plots and report.md into ``out``; returns the recommendation."""
    out.mkdir(parents=True, exist_ok=True)
    recommendation = recommend(result.rows)
    write_csv(result.rows, out / CSV_FILE)
    title = f"{result.dataset} ({result.split}): nDCG@10 against cost, by mode"
    plots = write_plots(result.rows, out, recommendation, title) if ok_rows(result.rows) else []
    write_markdown(result, out / REPORT_FILE, recommendation, command, plots)
    logger.info("wrote %s, %s and %d plots to %s", REPORT_FILE, CSV_FILE, len(plots), out)
    return recommendation
