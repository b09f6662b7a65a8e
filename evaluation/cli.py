"""``tandem eval``: retrieval quality by mode × variant on a BEIR folder, with report and plots."""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from tandem.bundle.backend import SearchBackend
from tandem.bundle.format import Bundle, BundleError, open_bundle
from tandem.evaluation.report import write_report
from tandem.evaluation.runner import (
    DEFAULT_OVERSAMPLE,
    NOT_TRAINED,
    BundleMismatchError,
    EvalConfig,
    EvalResult,
    run_evaluation,
)
from tandem.models.artifacts import ArtifactError
from tandem.models.encoder import Device, Encoder, EncoderError

from tandem.data.beir import DatasetError, EvalSet, load_eval_set

logger = logging.getLogger(__name__)
console = Console()


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(
            f"expected comma-separated integers, got {text!r}", param_hint=option
        ) from exc
    if not values or min(values) < 1:
        raise typer.BadParameter("expected integers >= 1", param_hint=option)
    return sorted(set(values))


def _encoder(spec: str, device: Device) -> Encoder:
    try:
        return Encoder(_artifact(spec), device=device)
    except (ArtifactError, EncoderError) as exc:
        console.print(f"[red]cannot load {spec!r}: {exc}[/red]")
        raise typer.Exit(2) from exc


def _open_bundle(path: Path) -> Bundle:
    try:
        return open_bundle(path)
    except BundleError as exc:
        console.print(f"[red]cannot open bundle {path}: {exc}[/red]")
        raise typer.Exit(2) from exc


@contextlib.contextmanager
def _bundle_for_run(path: Path | None) -> Iterator[Bundle | None]:
    """The optional teacher bundle, open for one run; a teacher mismatch exits with 2."""
    opened = _open_bundle(path) if path is not None else None
    try:
        yield opened
    except BundleMismatchError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    finally:
        if opened is not None:
            opened.close()


def _milvus_backend(backend: str, uri: str | None, collection: str | None) -> SearchBackend | None:
    """The Milvus backend --backend milvus names (pymilvus imported only then)."""
    if backend == "faiss":
        return None
    if backend != "milvus":
        raise typer.BadParameter("expected faiss or milvus", param_hint="--backend")
    if not uri or not collection:
        raise typer.BadParameter("--backend milvus needs --milvus-uri and --collection")
    try:
        from tandem.bundle.milvus import MilvusBackend
    except ImportError as exc:
        console.print(f"[red]--backend milvus needs pymilvus: pip install 'tandem[milvus]' ({exc})")
        raise typer.Exit(2) from exc
    from tandem.bundle.backend import BackendError

    try:
        return MilvusBackend(uri, collection)
    except BackendError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def eval_command(
    dataset: Annotated[
        Path,
        typer.Option(
            "--dataset",
            exists=True,
            file_okay=False,
            help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", file_okay=False, help="Where report.md, results.csv and the plots go."
        ),
    ],
    teacher: Annotated[
        str,
        typer.Option(
            "--teacher",
            metavar="SPEC",
            help="Document encoder spec (artifact folder, aligned name, or model spec).",
        ),
    ],
    student: Annotated[
        list[str] | None,
        typer.Option(
            "--student",
            metavar="SPEC",
            help="Query encoder spec, repeatable. A raw student gives student-symmetric and "
            "asymmetric-unaligned; one aligned to the teacher gives asymmetric.",
        ),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="Only this split's judged queries are evaluated.")
    ] = "test",
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants",
            help="Comma-separated variant names (f32-768,int8-768,bin-768,bin-768-hnsw,...). "
            "Default per document dimension D: f32-D, f32-D/2, f32-D/4, int8-D, bin-D, f32-D-hnsw, "
            "bin-D-hnsw. Names that do not fit a mode's dimension are reported n/a.",
        ),
    ] = None,
    oversample: Annotated[
        str,
        typer.Option(
            "--oversample",
            help="Rescoring factors: a k-hit request rescores k×N candidates of a lossy variant.",
        ),
    ] = ",".join(map(str, DEFAULT_OVERSAMPLE)),
    latency_queries: Annotated[
        int,
        typer.Option(
            "--latency-queries",
            min=1,
            help="Queries timed one at a time for encode/search latency (more: steadier, slower).",
        ),
    ] = 64,
    ef_search: Annotated[
        int | None,
        typer.Option("--ef-search", min=1, help="HNSW efSearch; default: the index's own."),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            exists=True,
            help="A bundle built by the teacher over this corpus: its vectors, ids and variant "
            "files are evaluated as served (missing variants are built from its vectors).",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option("--device", help="auto, cpu or cuda for the encoders; latency depends on it."),
    ] = "cpu",
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="Where the bundle's variants are searched: faiss (in process) or milvus "
            "(the collection --bundle was pushed to; variants it lacks are n/a).",
        ),
    ] = "faiss",
    milvus_uri: Annotated[
        str | None, typer.Option("--milvus-uri", help="Milvus URI or milvus-lite .db path.")
    ] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", help="Milvus alias the bundle was pushed under.")
    ] = None,
    weight_split: Annotated[
        str,
        typer.Option(
            "--weight-split",
            help="Split whose judgments report the fused weight they would pick, beside the "
            "label-free one ('' for none; never the evaluated split).",
        ),
    ] = "train",
) -> None:
    """Evaluate teacher-symmetric, student-symmetric, asymmetric, fused (and unaligned) retrieval.

    Every embedding goes through the content-addressed cache, so the second run
    with the same inputs takes seconds.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("expected auto, cpu or cuda", param_hint="--device")
    factors = _ints(oversample, "--oversample")
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    started = time.perf_counter()
    try:
        eval_set = load_eval_set(dataset, split)
    except DatasetError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    teacher_encoder = _encoder(teacher, device)  # type: ignore[arg-type]
    students = [_encoder(spec, device) for spec in student or []]  # type: ignore[arg-type]
    config = EvalConfig(
        variants=names, oversample=factors, latency_queries=latency_queries, ef_search=ef_search
    )
    remote = _milvus_backend(backend, milvus_uri, collection)
    judged = _judged_split(dataset, weight_split, split) if students else None
    try:
        with _bundle_for_run(bundle) as opened:
            result = run_evaluation(
                eval_set, teacher_encoder, students, config, opened, backend=remote, judged=judged
            )
    finally:
        if remote is not None:
            remote.close()
    command = _command_line(
        [
            ("--dataset", dataset),
            ("--split", split),
            ("--teacher", teacher),
            *[("--student", spec) for spec in student or []],
            ("--bundle", bundle),
            ("--variants", variants),
            ("--oversample", oversample),
            ("--latency-queries", latency_queries),
            ("--ef-search", ef_search),
            ("--device", device),
            ("--backend", backend if backend != "faiss" else None),
            ("--milvus-uri", milvus_uri),
            ("--collection", collection),
            ("--weight-split", weight_split if weight_split != "train" else None),
            ("--out", out),
        ]
    )
    recommendation = write_report(result, out, command)
    console.print(results_table(result))
    for row in result.rows:
        if row.status != "ok":
            console.print(
                f"[dim]n/a: {row.mode} ({row.query_encoder}) {row.variant}: {row.note}[/dim]"
            )
    if recommendation is not None:
        console.print(f"[bold]recommended:[/bold] {recommendation.describe()}")
    console.print(f"report: {out / 'report.md'}  ({time.perf_counter() - started:.1f} s)")


def _judged_split(dataset: Path, weight_split: str, split: str) -> EvalSet | None:
    """The split that reports the w judgments would pick; None when absent or the same split."""
    if not weight_split or weight_split == split:
        return None
    if not (dataset / "qrels" / f"{weight_split}.tsv").exists():
        logger.info(
            "no %s judgments in %s: the judged fused weight is not reported", weight_split, dataset
        )
        return None
    try:
        return load_eval_set(dataset, weight_split)
    except DatasetError as exc:
        console.print(f"[yellow]{weight_split} split not usable for the weight: {exc}[/yellow]")
        return None


def align_report_command(
    dataset: Annotated[
        Path,
        typer.Option("--dataset", exists=True, file_okay=False, help="BEIR folder to score on."),
    ],
    teacher: Annotated[str, typer.Option("--teacher", metavar="SPEC", help="The teacher.")],
    student: Annotated[
        list[str],
        typer.Option(
            "--student",
            metavar="SPEC",
            help="Repeatable: the raw student (unaligned baseline) and its aligned versions.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", dir_okay=False, help="Markdown report path.")],
    split: Annotated[str, typer.Option("--split", help="Queries of this split only.")] = "test",
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", exists=True, help="Teacher bundle of this corpus (optional)."),
    ] = None,
) -> None:
    """Cosine to the teacher (held-out and eval queries) and asymmetric nDCG@10 per student."""
    from tandem.evaluation.align_report import alignment_report, write_markdown

    try:
        eval_set = load_eval_set(dataset, split)
    except DatasetError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    teacher_encoder = _encoder(teacher, "cpu")
    students = [_encoder(spec, "cpu") for spec in student]
    with _bundle_for_run(bundle) as opened:
        report = alignment_report(eval_set, teacher_encoder, students, opened)
    command = _command_line(
        [
            ("--dataset", dataset),
            ("--split", split),
            ("--teacher", teacher),
            *[("--student", spec) for spec in student],
            ("--bundle", bundle),
            ("--out", out),
        ],
        ["tandem", "models", "align-report"],
    )
    write_markdown(report, out, command)
    cosines = Table(title=f"cosine to {report.teacher}")
    for name in ("student", "method", "held-out query", "held-out passage", f"{split} queries"):
        cosines.add_column(name)
    for c in report.cosines:
        cells = (c.heldout_query, c.heldout_passage, c.eval_query)
        cosines.add_row(c.student, c.method, *("n/a" if v is None else f"{v:.4f}" for v in cells))
    console.print(cosines)
    retrieval = Table(title=f"nDCG@10, {report.dataset} {split}")
    for name in ("mode", "query encoder", "nDCG@10", "× teacher"):
        retrieval.add_column(name)
    for r in report.retrieval:
        retrieval.add_row(r.mode, r.query_encoder, f"{r.ndcg_at_10:.4f}", f"{r.of_teacher:.3f}")
    console.print(retrieval)
    console.print(f"report: {out}")


def _command_line(
    options: list[tuple[str, object]], prefix: Sequence[str] = ("tandem", "eval")
) -> str:
    """The command that reproduces this report, for the report itself; unset options left out."""
    parts = list(prefix)
    for flag, value in options:
        if value is not None and value != "":
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def results_table(result: EvalResult) -> Table:
    """The rows as a terminal table, one section per (mode, query encoder)."""
    table = Table(title=f"{result.dataset} ({result.split}), documents by teacher {result.teacher}")
    table.add_column("mode / queries")
    table.add_column("variant", no_wrap=True)
    for name in ("nDCG@10", "published", "R@100", "MRR@10", "B/doc", "ms/query"):
        table.add_column(name, justify="right", no_wrap=True)
    group: tuple[str, str] | None = None
    for row in result.rows:
        first = (row.mode, row.query_encoder) != group
        if first and group is not None:
            table.add_section()
        group = (row.mode, row.query_encoder)
        who = f"{row.mode}\n[dim]{row.query_encoder}[/dim]" if first else ""
        if row.status != "ok":
            table.add_row(who, row.variant, "n/a", "", "", "", "", "")
            continue
        published = row.published_ndcg_at_10
        table.add_row(
            who,
            row.label + ("\n[dim]not trained for it[/dim]" if row.note == NOT_TRAINED else ""),
            f"{row.ndcg_at_10:.4f}",
            "" if published is None else f"{published:.4f}",
            f"{row.recall_at_100:.4f}",
            f"{row.mrr_at_10:.4f}",
            f"{row.bytes_per_doc:,.0f}",
            f"{row.latency_ms:.2f}",
        )
    return table


def _artifact(spec: str) -> Path:
    """The artifact for spec: a command, unlike the runtime, may export it on first use."""
    from tandem.toolchain.export import export_artifact  # finds first; torch only to export

    return export_artifact(spec)
