"""``tandem index``: build, update, verify and inspect index bundles.

User errors (bad corpus rows, unknown variants, a corrupt bundle, a busy
root) print one clear line and exit 1; Ctrl-C during a build exits 130 and
says how to resume. Progress is a rich bar with docs/s and ETA.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from tandem.bundle.format import STUDENT_VIEW, BundleError, open_bundle, open_root, verify_bundle
from tandem.bundle.variants import VariantError, VariantSpec, parse_variants
from tandem.indexer.build import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_MAX_BATCH,
    BuildError,
    EmbeddingEngine,
    EmbedSettings,
    ShardFolder,
    build_bundle,
)
from tandem.indexer.update import add_documents, add_variants, delete_documents
from tandem.indexer.views import StudentSide, add_view, student_side
from tandem.models.artifacts import ArtifactError
from tandem.models.card import ModelCard
from tandem.models.embedding_cache import EmbeddingCache
from tandem.models.encoder import Device, Encoder, EncoderError
from tandem.models.sources import ModelSourceError

from tandem.console import rich_progress, say, stderr, stdout
from tandem.data.corpus import (
    BEIR_CORPUS,
    CorpusError,
    CorpusFormat,
    CorpusStats,
    TextFields,
    corpus_signature,
    read_corpus,
)

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024  # = tandem.indexer.ray_engine.DEFAULT_SHARD_SIZE (not imported: no ray)
DEFAULT_RETRIES = 2

app = typer.Typer(
    help="Build and maintain index bundles (corpus -> teacher vectors -> FAISS variants).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

USER_ERRORS = (
    BuildError,
    BundleError,
    CorpusError,
    VariantError,
    ArtifactError,
    EncoderError,
    ModelSourceError,
)


@contextmanager
def user_errors(resume_hint: str | None = None) -> Iterator[None]:
    """Print user errors as one line and exit non-zero, without a traceback."""
    try:
        yield
    except USER_ERRORS as exc:
        say(stderr(), "error: ", str(exc), "bold red")
        raise typer.Exit(1) from None
    except OSError as exc:
        # A full disk, a size limit or permissions. Versions are written to a hidden
        # stage and published by a rename, so a failed write leaves `current` as it was.
        then = resume_hint or "fix the cause and re-run"
        say(stderr(), "error: ", f"{exc} (nothing was published; {then})", "bold red")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        hint = f"; {resume_hint}" if resume_hint else ""
        say(stderr(), "interrupted", hint, "yellow")
        raise typer.Exit(130) from None


def load_teacher(
    spec: str,
    precision: str,
    threads: int | None,
    device: str,
    variants: list[str] | None = None,
) -> Encoder:
    """Resolve and load the teacher; variant names are checked first against its card."""
    if precision not in ("fp32", "int8"):
        raise BuildError(f"--precision must be fp32 or int8, got {precision!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise BuildError(f"--device must be auto, cpu or cuda, got {device!r}")
    if threads:
        import faiss

        faiss.omp_set_num_threads(threads)
    folder = _artifact(spec)
    if variants:
        parse_variants(variants, ModelCard.load(folder).dim)  # fail before a slow model load
    dev: Device = device  # type: ignore[assignment]
    return Encoder(folder, precision=precision, device=dev, threads=threads)  # type: ignore[arg-type]


def text_fields(
    id_field: str | None, text_field: str, title_field: str, template: str | None
) -> TextFields:
    return TextFields(
        id_field=id_field or None,
        text_field=text_field,
        title_field=title_field or None,
        template=template or None,
    )


def corpus_info(corpus: Path, fields: TextFields, fmt: str, skip_bad: bool) -> dict[str, Any]:
    return {
        "source": corpus_signature(corpus),
        "format": fmt,
        "fields": {
            "id": fields.id_field,
            "text": fields.text_field,
            "title": fields.title_field,
            "template": fields.template,
        },
        "skip_bad": skip_bad,
    }


def default_root(corpus: Path) -> Path:
    name = corpus.name if corpus.is_dir() else corpus.stem
    if corpus.name == BEIR_CORPUS:
        name = corpus.parent.name
    return Path("bundles") / name


def report_stats(stats: CorpusStats) -> None:
    if stats.n_bad or stats.n_duplicates:
        say(
            stderr(),
            f"skipped {stats.n_bad} bad row(s) and {stats.n_duplicates} duplicate id(s)",
            "",
            "yellow",
        )
        for example in stats.examples:
            say(stderr(), "  ", example)


# Options shared by build and add (Annotated keeps defaults in the signatures).
IdField = Annotated[
    str | None, typer.Option("--id-field", help="Id field (default: id, _id, doc_id, docid).")
]
TextField = Annotated[str, typer.Option("--text-field", help="Text field/column.")]
TitleField = Annotated[
    str,
    typer.Option(
        "--title-field", help="Title field, embedded as title + ' ' + text ('' for none)."
    ),
]
Template = Annotated[
    str | None,
    typer.Option("--template", help="str.format template over row fields, e.g. '{title}: {text}'."),
]
Format = Annotated[str, typer.Option("--format", help="auto, jsonl, beir, csv or parquet.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Skip malformed rows, report a count.")]
CheckpointEvery = Annotated[
    int,
    typer.Option(
        "--checkpoint-every",
        help="Docs per checkpoint: at most this many are re-embedded after a crash.",
    ),
]
BatchTokens = Annotated[
    int,
    typer.Option(
        "--batch-tokens",
        help="Padded-token budget per teacher batch (longest x count); lower it to save memory.",
    ),
]
MaxBatch = Annotated[int, typer.Option("--max-batch", help="Most texts per teacher batch.")]
Threads = Annotated[
    int | None, typer.Option("--threads", help="CPU threads for ONNX Runtime and FAISS.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda for the teacher.")]
NoCache = Annotated[
    bool,
    typer.Option(
        "--no-cache", help="Do not use the shared teacher embedding cache ($TANDEM_HOME)."
    ),
]
CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Embedding cache folder (default $TANDEM_HOME/embeddings); it is also the "
        "checkpoint store that --resume reads.",
    ),
]
Root = Annotated[Path, typer.Argument(help="Bundle root.")]
StudentOpt = Annotated[
    str | None,
    typer.Option(
        "--student",
        help="Also embed the documents with this student (raw or aligned): the student view "
        "that fused scoring searches.",
    ),
]
StudentVariants = Annotated[
    str | None,
    typer.Option(
        "--student-variants",
        help="Student view variants, e.g. f32-384,bin-384 (default: f32, int8 and bin at its dim).",
    ),
]
FusedWeight = Annotated[
    float | None,
    typer.Option(
        "--fused-weight",
        help="Weight of the asymmetric cosine in fused scoring (default: the aligned "
        "student's label-free choice, else 0.5).",
    ),
]
BundlePath = Annotated[Path, typer.Argument(help="Bundle root or version directory.")]


@app.command()
def build(
    corpus: Annotated[Path, typer.Argument(help="JSONL/CSV/Parquet file or BEIR folder.")],
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher model spec.")] = (
        "all-mpnet-base-v2"
    ),
    out_root: Annotated[
        Path | None, typer.Option("--out", help="Bundle root (default ./bundles/<corpus name>).")
    ] = None,
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants",
            help="Comma-separated, e.g. f32-768,f32-256,int8-768,bin-768,bin-768-hnsw,ivfpq-768 "
            "(default: f32, int8 and bin at full dim, plus f32 at each Matryoshka dim the "
            "teacher's card lists).",
        ),
    ] = None,
    vectors_dtype: Annotated[
        str, typer.Option("--vectors-dtype", help="Stored vectors: f16 or f32.")
    ] = "f16",
    template: Template = None,
    text_field: TextField = "text",
    title_field: TitleField = "title",
    id_field: IdField = None,
    fmt: Format = "auto",
    skip_bad: SkipBad = False,
    dedupe: Annotated[
        bool, typer.Option("--dedupe", help="Keep the first document of a repeated id.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted build.")
    ] = False,
    checkpoint_every: CheckpointEvery = DEFAULT_CHECKPOINT_EVERY,
    batch_tokens: BatchTokens = DEFAULT_BATCH_TOKENS,
    max_batch: MaxBatch = DEFAULT_MAX_BATCH,
    threads: Threads = None,
    precision: Annotated[
        str, typer.Option("--precision", help="Teacher precision: fp32, or int8 if accepted.")
    ] = "fp32",
    device: DeviceOpt = "auto",
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    verify_after: Annotated[
        bool,
        typer.Option("--verify/--no-verify", help="Check every file's sha256 after publishing."),
    ] = True,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="Where the teacher runs: local (this process) or ray (a Ray Data actor pool).",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray cluster address (default: start Ray locally)."),
    ] = None,
    actors: Annotated[int, typer.Option("--actors", help="Ray actors, one teacher each.")] = 1,
    cpus_per_actor: Annotated[
        float, typer.Option("--cpus-per-actor", help="CPUs reserved by each Ray actor.")
    ] = 1.0,
    gpus_per_actor: Annotated[
        float,
        typer.Option("--gpus-per-actor", help="GPUs per Ray actor; > 0 runs the teacher on CUDA."),
    ] = 0.0,
    shard_size: Annotated[
        int,
        typer.Option("--shard-size", help="Docs per Ray shard: the unit of retry and resume."),
    ] = DEFAULT_SHARD_SIZE,
    retries: Annotated[
        int, typer.Option("--retries", help="Restarts of a dead Ray actor (its shard is retried).")
    ] = DEFAULT_RETRIES,
    from_embeddings: Annotated[
        Path | None,
        typer.Option(
            "--from-embeddings",
            help="Folder of Parquet shards (id, vector) + embeddings.json made by another job: "
            "assemble the bundle from them instead of running the teacher.",
        ),
    ] = None,
    student: StudentOpt = None,
    student_variants: StudentVariants = None,
    fused_weight: FusedWeight = None,
) -> None:
    """Embed a corpus with the teacher and publish a verified bundle version.

    With --student, the documents are embedded by the student too (the student
    view, for `"mode": "fused"`).
    """
    root = out_root or default_root(corpus)
    hint = f"run the same command with --resume to continue ({root})"
    with user_errors(hint):
        if vectors_dtype not in ("f16", "f32"):
            raise BuildError(f"--vectors-dtype must be f16 or f32, got {vectors_dtype!r}")
        if engine not in ("local", "ray"):
            raise BuildError(f"--engine must be local or ray, got {engine!r}")
        if from_embeddings is not None and engine != "local":
            raise BuildError("--from-embeddings assembles existing shards: drop --engine ray")
        if from_embeddings is not None and not from_embeddings.is_dir():
            raise BuildError(f"--from-embeddings {from_embeddings} is not a folder")
        fields = text_fields(id_field, text_field, title_field, template)
        info = corpus_info(corpus, fields, fmt, skip_bad) if corpus.exists() else {}
        stats = CorpusStats()
        docs = read_corpus(corpus, fields, _format(fmt), skip_bad, dedupe, stats)
        names = variants.split(",") if variants else None
        encoder = load_teacher(teacher, precision, threads, device, names)
        cache = None if no_cache else EmbeddingCache.for_encoder(encoder, root=cache_dir)
        chosen: EmbeddingEngine | None = None
        if from_embeddings is not None:
            chosen = ShardFolder(from_embeddings)
        elif engine == "ray":
            chosen = ray_engine(
                encoder, ray_address, actors, cpus_per_actor, gpus_per_actor, shard_size, retries,
                EmbedSettings(checkpoint_every, batch_tokens, max_batch),
            )  # fmt: skip
        side = load_student(student, fused_weight) if student else None
        with rich_progress() as progress:
            version_dir = build_bundle(
                docs,
                root,
                encoder,
                names,
                vectors_dtype=vectors_dtype,  # type: ignore[arg-type]
                resume=resume,
                dedupe=dedupe,
                settings=EmbedSettings(checkpoint_every, batch_tokens, max_batch),
                cache=cache,
                use_cache=not no_cache,
                progress=progress,
                corpus_info=info,
                corpus_stats=stats,
                engine=chosen,
                student=side,
                student_variants=_names(student_variants),
                student_cache=_student_cache(side, no_cache, cache_dir),
            )
        report_stats(stats)
        if verify_after:
            verify_bundle(version_dir)
        _print_info(version_dir, f"built {version_dir}" + (" (verified)" if verify_after else ""))


def ray_engine(
    encoder: Encoder,
    address: str | None,
    actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
    shard_size: int,
    retries: int,
    settings: EmbedSettings,
) -> EmbeddingEngine:
    """The Ray engine for a build; ray is imported only here (the ``ray`` extra)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise BuildError("--engine ray needs Ray: pip install 'tandem[ray]'") from None
    from tandem.indexer.ray_engine import RayEngine

    try:
        return RayEngine(
            teacher_dir=encoder.folder,
            address=address,
            actors=actors,
            cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor,
            shard_size=shard_size,
            retries=retries,
            batch_tokens=settings.batch_tokens,
            max_batch=settings.max_batch,
            precision=encoder.precision,
        )
    except ValueError as exc:
        raise BuildError(str(exc)) from None


@app.command()
def add(
    root: Root,
    corpus: Annotated[Path, typer.Argument(help="New documents (JSONL/CSV/Parquet/BEIR).")],
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher spec (default: the bundle's teacher).")
    ] = None,
    template: Template = None,
    text_field: TextField = "text",
    title_field: TitleField = "title",
    id_field: IdField = None,
    fmt: Format = "auto",
    skip_bad: SkipBad = False,
    dedupe: Annotated[
        bool,
        typer.Option("--dedupe", help="Skip documents whose id is in the bundle or repeated."),
    ] = False,
    checkpoint_every: CheckpointEvery = DEFAULT_CHECKPOINT_EVERY,
    batch_tokens: BatchTokens = DEFAULT_BATCH_TOKENS,
    max_batch: MaxBatch = DEFAULT_MAX_BATCH,
    threads: Threads = None,
    precision: Annotated[
        str | None, typer.Option("--precision", help="Teacher precision (default: the bundle's).")
    ] = None,
    device: DeviceOpt = "auto",
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
) -> None:
    """Embed only new documents and publish a new version with them appended."""
    with user_errors("re-run the same command: committed chunks come from the embedding cache"):
        with open_root(root) as current:
            spec = teacher or current.manifest.teacher_name
            built = current.manifest.build.get("teacher") or {}
            precision = precision or built.get("precision", "fp32")
            old_version = current.version
            view = current.manifest.views.get(STUDENT_VIEW)
        side = load_student(view.spec, view.fused_weight) if view is not None else None
        fields = text_fields(id_field, text_field, title_field, template)
        stats = CorpusStats()
        docs = read_corpus(corpus, fields, _format(fmt), skip_bad, dedupe, stats)
        encoder = load_teacher(spec, precision or "fp32", threads, device)
        cache = None if no_cache else EmbeddingCache.for_encoder(encoder, root=cache_dir)
        with rich_progress() as progress:
            version_dir = add_documents(
                root,
                docs,
                encoder,
                dedupe=dedupe,
                settings=EmbedSettings(checkpoint_every, batch_tokens, max_batch),
                cache=cache,
                use_cache=not no_cache,
                progress=progress,
                corpus_info=corpus_info(corpus, fields, fmt, skip_bad),
                corpus_stats=stats,
                student=side,
                student_cache=_student_cache(side, no_cache, cache_dir),
            )
        report_stats(stats)
        if version_dir.name == old_version:
            say(stderr(), "nothing new to add; ", f"{old_version} is unchanged", "yellow")
            return
        _print_info(version_dir, f"published {version_dir}")


@app.command()
def delete(
    root: Root,
    ids: Annotated[
        list[str] | None,
        typer.Option("--ids", help="External ids, comma-separated or repeated."),
    ] = None,
    ids_file: Annotated[
        Path | None, typer.Option("--ids-file", help="File with one id per line.")
    ] = None,
    missing_ok: Annotated[
        bool, typer.Option("--missing-ok", help="Ignore ids that are not in the bundle.")
    ] = False,
) -> None:
    """Publish a new version without the given documents (no re-embedding)."""
    with user_errors():
        wanted = [i.strip() for item in ids or [] for i in item.split(",") if i.strip()]
        if ids_file is not None:
            try:
                lines = ids_file.read_text().splitlines()
            except OSError as exc:
                raise BuildError(f"cannot read {ids_file}: {exc}") from exc
            wanted += [line.strip() for line in lines if line.strip()]
        if not wanted:
            raise BuildError("no ids given: pass --ids a,b,c or --ids-file FILE")
        with rich_progress() as progress:
            version_dir = delete_documents(root, wanted, missing_ok=missing_ok, progress=progress)
        _print_info(version_dir, f"current version: {version_dir}")


@app.command("add-variant")
def add_variant(
    root: Root,
    variants: Annotated[
        list[str], typer.Argument(help="Variant names, e.g. f32-256 bin-768-hnsw.")
    ],
) -> None:
    """Derive new variants from the stored vectors (no teacher) and publish a new version."""
    with user_errors():
        with rich_progress() as progress:
            version_dir = add_variants(root, variants, progress=progress)
        _print_info(version_dir, f"published {version_dir}")


@app.command("add-view")
def add_view_command(
    root: Root,
    student: Annotated[
        str,
        typer.Option(
            "--student",
            help="Student spec: the raw student, or a student aligned to this bundle's teacher "
            "(its native output is used, and its label-free fused weight is stored).",
        ),
    ],
    variants: StudentVariants = None,
    fused_weight: FusedWeight = None,
    checkpoint_every: CheckpointEvery = DEFAULT_CHECKPOINT_EVERY,
    batch_tokens: BatchTokens = DEFAULT_BATCH_TOKENS,
    max_batch: MaxBatch = DEFAULT_MAX_BATCH,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
) -> None:
    """Embed every document with the student too and publish a version with a student view."""
    with user_errors("re-run the same command: committed chunks come from the embedding cache"):
        side = load_student(student, fused_weight)
        cache = None if no_cache else EmbeddingCache.for_encoder(side.encoder, root=cache_dir)
        with rich_progress() as progress:
            version_dir = add_view(
                root,
                side,
                _names(variants),
                settings=EmbedSettings(checkpoint_every, batch_tokens, max_batch),
                cache=cache,
                use_cache=not no_cache,
                progress=progress,
            )
        _print_info(version_dir, f"published {version_dir}")


def load_student(spec: str, weight: float | None) -> StudentSide:
    """The student of a view, from a spec (raw or aligned student)."""
    side = student_side(spec, _artifact(spec), weight)
    say(
        stdout(),
        "student view: ",
        f"{side.encoder.name} ({side.encoder.card.fingerprint[:12]}), fused weight "
        f"{side.fused_weight:g} ({side.weight_source})",
    )
    return side


def _student_cache(
    side: StudentSide | None, no_cache: bool, cache_dir: Path | None
) -> EmbeddingCache | None:
    if side is None or no_cache:
        return None
    return EmbeddingCache.for_encoder(side.encoder, root=cache_dir)


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


@app.command()
def push(
    path: BundlePath,
    milvus: Annotated[
        str,
        typer.Option(
            "--milvus", help="Milvus URI (http://host:19530) or a local milvus-lite .db path."
        ),
    ],
    collection: Annotated[
        str, typer.Option("--collection", help="Alias clients use (versions are NAME_vNNNN).")
    ] = "tandem",
    variants: Annotated[
        str | None,
        typer.Option(
            "--variants",
            help="Comma-separated variants to push (default: every flat f32-D and bin-D one).",
        ),
    ] = None,
    keep: Annotated[
        int, typer.Option("--keep", help="Versions kept in Milvus, the live one included.")
    ] = 2,
) -> None:
    """Push a bundle version to Milvus as a new collection and switch the alias to it.

    The token, if the server needs one, is read from TANDEM_MILVUS_TOKEN.
    """
    import os

    with user_errors():
        try:
            from tandem.indexer.push import push_bundle
        except ImportError as exc:
            raise BuildError(f"push needs pymilvus: pip install 'tandem[milvus]' ({exc})") from None
        from tandem.bundle.backend import BackendError

        try:
            pushed = push_bundle(
                path,
                milvus,
                collection,
                token=os.environ.get("TANDEM_MILVUS_TOKEN") or None,
                variants=variants.split(",") if variants else None,
                keep=keep,
            )
        except BackendError as exc:
            raise BuildError(str(exc)) from None
        say(
            stdout(),
            f"pushed {pushed.n_docs:,} docs to {pushed.collection}",
            f"; {pushed.alias} -> {pushed.collection} ({pushed.switched_by}); "
            f"variants {', '.join(pushed.variants)}"
            + (f"; dropped {', '.join(pushed.dropped)}" if pushed.dropped else ""),
            "green",
        )


@app.command()
def verify(path: BundlePath) -> None:
    """Check the sha256 of every file in the bundle against its manifest."""
    with user_errors():
        verify_bundle(path)
        with open_bundle(path) as bundle:
            n_files = len(bundle.manifest.files) + 2
            say(stdout(), "ok ", f"{bundle.path}: {n_files} files verified", "green")


@app.command()
def info(
    path: BundlePath,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Doc count, variants, bytes per doc and total size per variant."""
    with user_errors():
        if as_json:
            with open_bundle(path) as bundle:
                stdout().print_json(json.dumps(bundle.manifest.model_dump(mode="json")))
            return
        _print_info(path, None)


def _format(fmt: str) -> CorpusFormat:
    if fmt not in ("auto", "jsonl", "beir", "csv", "parquet"):
        raise CorpusError(f"--format must be auto, jsonl, beir, csv or parquet, got {fmt!r}")
    return fmt  # type: ignore[return-value]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


def _print_info(path: Path, title: str | None) -> None:
    with open_bundle(path) as bundle:
        m = bundle.manifest
        sizes = bundle.sizes()
        n = max(bundle.n_docs, 1)
        if title:
            say(stdout(), title, "", "green")
        say(
            stdout(),
            f"{bundle.path}",
            f"  version {m.version}  {m.n_docs:,} docs  teacher {m.teacher_name} "
            f"({m.teacher_fingerprint[:12]})  dim {m.dim}  created {m.created_at}",
            "bold",
        )
        table = Table(title=None, show_lines=False)
        for column in ("variant", "structure", "vectors", "bytes/doc", "size", "build s"):
            left = column in ("variant", "structure")
            table.add_column(column, justify="left" if left else "right", no_wrap=True)
        for name, v in m.variants.items():
            spec = VariantSpec.parse(name, m.dim)
            structure = "hnsw" if spec.hnsw else ("ivf-pq" if spec.kind == "ivfpq" else "flat")
            table.add_row(
                name,
                structure,
                f"{v.ntotal:,}",
                f"{v.bytes / n:,.1f}",
                _human(v.bytes),
                f"{v.build_seconds:.1f}",
            )
        for view in bundle.views.values():
            for name, v in view.info.variants.items():
                spec = VariantSpec.parse(name, view.dim)
                structure = "hnsw" if spec.hnsw else ("ivf-pq" if spec.kind == "ivfpq" else "flat")
                cells = (f"{v.ntotal:,}", f"{v.bytes / n:,.1f}", _human(v.bytes))
                table.add_row(view.qualified(name), structure, *cells, f"{v.build_seconds:.1f}")
            size = sizes[f"{view.name}-vectors"]
            label = f"{view.name} vectors {view.info.vectors_dtype}"
            table.add_row(label, "npy", f"{m.n_docs:,}", f"{size / n:,.1f}", _human(size), "")
        for label, key, kind in ((f"vectors {m.vectors_dtype}", "vectors", "npy"),
                                 ("documents", "docs", "sqlite")):  # fmt: skip
            size = sizes[key]
            table.add_row(label, kind, f"{m.n_docs:,}", f"{size / n:,.1f}", _human(size), "")
        stdout().print(table)
        for view in bundle.views.values():
            say(
                stdout(),
                f"{view.name} view: ",
                f"{view.info.encoder_name} ({view.info.fingerprint[:12]}), dim {view.dim}, "
                f"fused weight {view.info.fused_weight:g} ({view.info.fused_weight_source})",
            )
        say(stdout(), "total ", _human(sum(sizes.values())))


def main() -> None:
    """Entry point for ``python -m tandem.indexer`` (same commands as ``tandem index``)."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=stderr(), show_path=False, rich_tracebacks=False)],
    )
    app()


def _artifact(spec: str) -> Path:
    """The artifact for spec: a command, unlike the runtime, may export it on first use."""
    from tandem.toolchain.export import export_artifact  # finds first; torch only to export

    return export_artifact(spec)
