"""Corpus -> published bundle version, resumable after Ctrl-C or kill -9.

A build runs in three phases inside the root's work folder:

1. *stage*: documents are streamed into a SQLite table (ids checked for
   duplicates there, not in RAM) and a sparse vectors file of the final
   size is created;
2. *embed*: documents are taken in order of text length (so each batch pads
   little) in checkpoint chunks of N; each chunk goes through the embedding
   cache (committed once per chunk, so the cache is the checkpoint store),
   its rows are written to the vectors file and synced, and only then is
   the chunk recorded as done in ``state.json``;
3. *publish*: variants are built from the vectors file chunk by chunk (no
   step holds all vectors in RAM), and the staged files are hardlinked into
   a new bundle version.

``--resume`` continues from the last recorded chunk with the same settings;
a chunk in flight when the process died is recomputed (or found in the
cache), so the result has every document exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
from tandem.bundle.docstore import DocReader, DocWriter, DuplicateIdError, length_order
from tandem.bundle.format import (
    BundleStage,
    VariantInfo,
    VectorsDtype,
    create_vectors,
    root_lock,
    versions_dir,
    work_dir,
)
from tandem.bundle.variants import (
    VariantSpec,
    build_index_with_params,
    parse_variants,
    write_index,
)
from tandem.bundle.vectorfile import VectorFile
from tandem.indexer.embeddings import ShardError, ShardsManifest, fill_vectors
from tandem.models.embedding_cache import EmbeddingCache, encode_cached
from tandem.models.encoder import Encoder

from tandem.data.corpus import CorpusStats, Doc, as_docs
from tandem.errors import DataError
from tandem.home import stable_hash, write_json_atomic

if TYPE_CHECKING:
    from tandem.indexer.views import StudentSide

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
STATE_FILE = "state.json"
WORK_DOCS = "docs.sqlite"
WORK_VECTORS = "vectors.npy"
WORK_STUDENT_VECTORS = "student.vectors.npy"
DEFAULT_CHECKPOINT_EVERY = 256  # docs; at most this many are re-embedded after a crash
DEFAULT_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH = 128
# Rows per chunk when variants are built from the vectors file: bounds the
# float32 working copies (8k x 768 x 4 B = 24 MiB each) whatever the corpus size.
VARIANT_CHUNK = 8192

DocLike = Doc | Mapping[str, Any] | tuple[str, str]


class BuildError(DataError):
    """A build or update cannot proceed; the message says what to do."""


class Progress(Protocol):
    """Where builds report progress; the CLI renders it as a rich progress bar."""

    def phase(self, name: str, total: int, done: int = 0) -> None: ...

    def advance(self, n: int) -> None: ...


class NoProgress:
    """Progress that goes nowhere (library default); phases are logged."""

    def phase(self, name: str, total: int, done: int = 0) -> None:
        logger.info("%s: %d/%d", name, done, total)

    def advance(self, n: int) -> None:
        return None


class EmbeddingEngine(Protocol):
    """Where the teacher vectors come from when not from this process (Ray, other jobs).

    ``embed`` leaves a shard folder (see embeddings.py) covering every staged
    document and returns it; the builder checks its teacher and loads it.
    """

    def identity(self) -> dict[str, Any]: ...

    def embed(
        self, work: Path, n_docs: int, docs: Path, teacher: Encoder, progress: Progress
    ) -> Path: ...


@dataclass(frozen=True)
class ShardFolder:
    """Embeddings another job already wrote (``--from-embeddings SHARDS/``)."""

    path: Path

    def identity(self) -> dict[str, Any]:
        return {"engine": "shards", "path": str(Path(self.path).resolve())}

    def embed(
        self, work: Path, n_docs: int, docs: Path, teacher: Encoder, progress: Progress
    ) -> Path:
        return Path(self.path)


@dataclass(frozen=True)
class EmbedSettings:
    """How the teacher is run: checkpoint chunk size and the batch token budget."""

    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1 or self.batch_tokens < 1 or self.max_batch < 1:
            raise BuildError(
                f"checkpoint size, batch tokens and max batch must be positive: {self}"
            )


@dataclass
class BuildState:
    """What the work folder has done so far; rewritten atomically after every step."""

    key: str
    settings: dict[str, Any]
    checkpoint_every: int
    format: int = STATE_FORMAT
    staged: bool = False
    n_docs: int = 0
    corpus_stats: dict[str, Any] = field(default_factory=dict)
    chunks_done: int = 0
    embed_seconds: float = 0.0
    student_chunks_done: int = 0  # the student view, embedded after the teacher
    student_embed_seconds: float = 0.0
    resumed: int = 0
    published: str | None = None
    vectors_filled: bool = False  # engine builds: the shards are loaded into the vectors file

    def save(self, work: Path) -> None:
        write_json_atomic(work / STATE_FILE, asdict(self))

    @classmethod
    def load(cls, work: Path) -> BuildState | None:
        try:
            data = json.loads((work / STATE_FILE).read_text())
            if data.get("format") != STATE_FORMAT:
                return None
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


def default_variants(dim: int, matryoshka_dims: Sequence[int] = ()) -> list[str]:
    """Exact, int8 and binary at full dimension, plus each truncation the teacher was trained for.

    Truncations come from the teacher's card (arctic-embed-m-v1.5: 256); other
    teachers get none by default, though ``f32-N`` can still be asked for.
    """
    truncated = [f"f32-{d}" for d in matryoshka_dims if 0 < d < dim]
    return [f"f32-{dim}", *truncated, f"int8-{dim}", f"bin-{dim}"]


def teacher_identity(teacher: Encoder) -> dict[str, str]:
    return {
        "name": teacher.card.name,
        "fingerprint": teacher.card.fingerprint,
        "precision": teacher.precision,
    }


def tandem_version() -> str:
    try:
        return version("tandem")
    except PackageNotFoundError:
        return "unknown"


def embed_rows(
    teacher: Encoder,
    texts_of: Callable[[npt.NDArray[np.int64]], list[str]],
    rows: npt.NDArray[np.int64],
    out: VectorFile,
    cache: EmbeddingCache | None,
    settings: EmbedSettings,
    progress: Progress,
    first_chunk: int = 0,
    on_checkpoint: Callable[[int], None] | None = None,
) -> None:
    """Embed ``rows`` (in the order given) into ``out`` one checkpoint chunk at a time.

    After each chunk the rows are written and made durable before
    ``on_checkpoint(chunks_done)`` runs, so a recorded checkpoint never points
    at vectors that are not on disk.
    """
    every = settings.checkpoint_every
    for c in range(first_chunk, math.ceil(len(rows) / every)):
        chunk_rows = rows[c * every : (c + 1) * every]
        texts = texts_of(chunk_rows)
        vecs = encode_cached(
            teacher,
            texts,
            "document",
            cache,
            chunk_size=len(texts),  # one cache commit per checkpoint chunk
            on_progress=progress.advance,
            token_budget=settings.batch_tokens,
            max_batch=settings.max_batch,
        )
        if not np.isfinite(vecs).all():
            raise BuildError(f"the teacher produced non-finite vectors in chunk {c}")
        out.write_rows(chunk_rows, vecs)
        out.flush()
        if on_checkpoint is not None:
            on_checkpoint(c + 1)


def build_variants(
    stage: BundleStage,
    specs: Sequence[VariantSpec],
    vectors: VectorFile | np.ndarray[Any, Any],
    progress: Progress,
    view: str | None = None,
) -> dict[str, VariantInfo]:
    """Build each variant from the stored vectors into the stage, one at a time.

    ``view``: the variants of that view (e.g. the student's), not the teacher's.
    """
    infos: dict[str, VariantInfo] = {}
    for spec in specs:
        label = f"{view} variant {spec.name}" if view else f"variant {spec.name}"
        progress.phase(label, total=int(vectors.shape[0]))
        started = time.perf_counter()
        index, params = build_index_with_params(spec, vectors, VARIANT_CHUNK, progress.advance)
        path = stage.view_variant_path(view, spec.name) if view else stage.variant_path(spec.name)
        write_index(spec, index, path)
        infos[spec.name] = stage.variant_info(
            spec.name, int(index.ntotal), time.perf_counter() - started, params, view=view
        )
        del index
    return infos


def build_bundle(
    docs: Iterable[DocLike],
    root: Path,
    teacher: Encoder,
    variants: Sequence[str] | None = None,
    *,
    vectors_dtype: VectorsDtype = "f16",
    resume: bool = False,
    dedupe: bool = False,
    settings: EmbedSettings | None = None,
    cache: EmbeddingCache | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
    corpus_info: dict[str, Any] | None = None,
    corpus_stats: CorpusStats | None = None,
    students: Sequence[str] = (),
    engine: EmbeddingEngine | None = None,
    student: StudentSide | None = None,
    student_variants: Sequence[str] | None = None,
    student_cache: EmbeddingCache | None = None,
) -> Path:
    """Embed ``docs`` with the teacher and publish a new bundle version under ``root``.

    With ``student``, the documents are also embedded by it into the student
    view (after the teacher, checkpointed the same way), for fused scoring.

    Returns the published version directory. ``cache`` defaults to the
    teacher's shared embedding cache (``use_cache=False`` disables it; resume
    then relies on the work folder alone). ``corpus_info`` (e.g. the corpus
    file signature and text fields) is recorded in the manifest and must
    match on ``resume``; ``corpus_stats`` is read after the docs are consumed.
    ``engine`` embeds elsewhere (Ray, or shards another job wrote) instead of
    in this process; the bundle is assembled the same way.
    """
    root = Path(root)
    names = variants or default_variants(teacher.dim, teacher.card.matryoshka_dims)
    specs = parse_variants(list(names), teacher.dim)
    settings = settings or EmbedSettings()
    progress = progress or NoProgress()
    if vectors_dtype not in ("f16", "f32"):
        raise BuildError(f"vectors dtype must be f16 or f32, got {vectors_dtype!r}")
    identity = {
        "teacher": teacher_identity(teacher),
        "vectors_dtype": vectors_dtype,
        "dedupe": dedupe,
        "corpus": corpus_info or {},
    }
    if engine is not None:
        identity["embedding"] = engine.identity()
    if student is not None:
        from tandem.indexer.views import default_view_variants

        identity["student"] = teacher_identity(student.encoder)
        student_specs = parse_variants(
            list(student_variants or default_view_variants(student.encoder.dim)),
            student.encoder.dim,
        )
    key = stable_hash(identity)
    with root_lock(root):
        work = work_dir(root)
        state = _start_or_resume(work, key, identity, resume, settings.checkpoint_every)
        if state.published is not None:
            done = versions_dir(root) / state.published
            shutil.rmtree(work, ignore_errors=True)
            logger.info("the interrupted build had already published %s", done)
            return done
        if not state.staged:
            try:
                _stage(
                    docs, work, state, dedupe, teacher.dim, vectors_dtype, corpus_stats, progress
                )
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)  # nothing embedded yet: nothing to resume
                raise
        if engine is not None:
            _embed_with(engine, work, state, teacher, progress)
        else:
            if use_cache and cache is None:
                cache = EmbeddingCache.for_encoder(teacher)
            _embed(work, state, teacher, cache, settings, progress)
        if student is not None:
            if use_cache and student_cache is None:
                student_cache = EmbeddingCache.for_encoder(student.encoder)
            _embed_student(work, state, student, vectors_dtype, student_cache, settings, progress)
        stage_settings = asdict(settings) | {"checkpoint_every": state.checkpoint_every}
        if engine is not None:
            stage_settings["embedding"] = engine.identity()
        with BundleStage(root) as stage:
            stage.adopt(work / WORK_DOCS, stage.docs_path())
            stage.adopt(work / WORK_VECTORS, stage.vectors_path(vectors_dtype))
            with VectorFile(stage.vectors_path(vectors_dtype)) as vectors:
                infos = build_variants(stage, specs, vectors, progress)
            views = {}
            if student is not None:
                from tandem.bundle.format import STUDENT_VIEW
                from tandem.indexer.views import view_info

                path = stage.view_vectors_path(STUDENT_VIEW, vectors_dtype)
                stage.adopt(work / WORK_STUDENT_VECTORS, path)
                with VectorFile(path) as student_vectors:
                    view_variants = build_variants(
                        stage, student_specs, student_vectors, progress, view=STUDENT_VIEW
                    )
                views[STUDENT_VIEW] = view_info(
                    stage,
                    student,
                    vectors_dtype,
                    view_variants,
                    {"embed_seconds": round(state.student_embed_seconds, 3)},
                )
            published = stage.publish(
                teacher_name=teacher.card.name,
                teacher_fingerprint=teacher.card.fingerprint,
                teacher_card=teacher.card.model_dump(mode="json")
                | {"fingerprint": teacher.card.fingerprint},
                dim=teacher.dim,
                normalized=teacher.card.normalize,
                n_docs=state.n_docs,
                vectors_dtype=vectors_dtype,
                variants=infos,
                build={
                    "operation": "build",
                    "parent": None,
                    "teacher": identity["teacher"],
                    "corpus": (corpus_info or {}) | {"stats": state.corpus_stats},
                    "settings": stage_settings | {"vectors_dtype": vectors_dtype, "dedupe": dedupe},
                    "embed_seconds": round(state.embed_seconds, 3),
                    "resumed": state.resumed,
                    "history": [],
                    "tandem_version": tandem_version(),
                },
                students=students,
                views=views,
            )
        state.published = published.name
        state.save(work)
        shutil.rmtree(work, ignore_errors=True)
    return published


def _start_or_resume(
    work: Path, key: str, identity: dict[str, Any], resume: bool, checkpoint_every: int
) -> BuildState:
    if work.exists():
        state = BuildState.load(work) if resume else None
        if state is not None:
            if state.key != key:
                differs = sorted(k for k in identity if identity[k] != state.settings.get(k))
                raise BuildError(
                    f"the interrupted build in {work} used different settings "
                    f"({', '.join(differs) or 'corpus'} changed); "
                    "rerun without --resume to start over"
                )
            if state.checkpoint_every != checkpoint_every:
                logger.info(
                    "resuming with the interrupted build's checkpoint size %d",
                    state.checkpoint_every,
                )
            state.resumed += 1
            state.save(work)
            logger.info(
                "resuming: %d docs staged, %d checkpoint chunk(s) done",
                state.n_docs,
                state.chunks_done,
            )
            return state
        if resume:
            logger.warning("the work folder %s has no usable state; starting over", work)
        else:
            logger.warning(
                "discarding the interrupted build in %s (pass --resume to continue it)", work
            )
        shutil.rmtree(work)
    elif resume:
        logger.info("nothing to resume in %s; starting a new build", work.parent)
    work.mkdir(parents=True)
    state = BuildState(key=key, settings=identity, checkpoint_every=checkpoint_every)
    state.save(work)
    return state


def _stage(
    docs: Iterable[DocLike],
    work: Path,
    state: BuildState,
    dedupe: bool,
    dim: int,
    dtype: VectorsDtype,
    corpus_stats: CorpusStats | None,
    progress: Progress,
) -> None:
    """Stream documents into the work table and create the (sparse) vectors file."""
    progress.phase("reading corpus", total=0)
    for stale in (work / WORK_DOCS, work / WORK_VECTORS):
        stale.unlink(missing_ok=True)
    writer = DocWriter(work / WORK_DOCS)
    skipped = 0
    try:
        for doc in as_docs(docs):
            if not writer.add(doc, dedupe):
                skipped += 1
            progress.advance(1)
    except DuplicateIdError as exc:
        raise BuildError(f"{exc} in the documents (pass --dedupe to keep the first)") from None
    finally:
        writer.close()
    n = writer.next_iid
    if n == 0:
        raise BuildError("the corpus has no documents")
    stats = asdict(corpus_stats) if corpus_stats is not None else {}
    stats["n_duplicates"] = stats.get("n_duplicates", 0) + skipped
    stats["n_docs"] = n
    create_vectors(work / WORK_VECTORS, n, dim, dtype).close()
    state.staged, state.n_docs, state.corpus_stats = True, n, stats
    state.save(work)
    logger.info("staged %d documents", n)


def _embed(
    work: Path,
    state: BuildState,
    teacher: Encoder,
    cache: EmbeddingCache | None,
    settings: EmbedSettings,
    progress: Progress,
) -> None:
    def record(chunks_done: int, seconds: float) -> None:
        state.chunks_done, state.embed_seconds = chunks_done, seconds

    resume = (state.chunks_done, state.embed_seconds, record)
    _embed_checkpointed(
        work, state, teacher, work / WORK_VECTORS, "embedding", resume, cache, settings, progress
    )


def _embed_checkpointed(
    work: Path,
    state: BuildState,
    encoder: Encoder,
    out_path: Path,
    label: str,
    resume: tuple[int, float, Callable[[int, float], None]],
    cache: EmbeddingCache | None,
    settings: EmbedSettings,
    progress: Progress,
) -> None:
    """Embed every staged doc into ``out_path`` in checkpointed chunks, resuming where it stopped.

    ``resume`` is (chunks done, seconds spent, record): the view's own counters
    in the build state, so the teacher and the student view resume separately.
    """
    done, base_seconds, record = resume
    every = state.checkpoint_every
    settings = EmbedSettings(every, settings.batch_tokens, settings.max_batch)
    progress.phase(label, total=state.n_docs, done=min(state.n_docs, done * every))
    if done >= math.ceil(state.n_docs / every):
        return
    out = VectorFile(out_path, writable=True)
    reader = DocReader(work / WORK_DOCS)
    started = time.perf_counter()

    def checkpoint(chunks_done: int) -> None:
        record(chunks_done, base_seconds + time.perf_counter() - started)
        state.save(work)

    try:
        embed_rows(
            encoder,
            lambda rows: reader.texts(rows.tolist()),
            length_order(work / WORK_DOCS),
            out,
            cache,
            settings,
            progress,
            first_chunk=done,
            on_checkpoint=checkpoint,
        )
    finally:
        reader.close()
        out.close()


def _embed_with(
    engine: EmbeddingEngine, work: Path, state: BuildState, teacher: Encoder, progress: Progress
) -> None:
    """Have the engine write shards, check their teacher, load them into the vectors file."""
    if state.vectors_filled:
        return
    started = time.perf_counter()
    try:
        folder = engine.embed(work, state.n_docs, work / WORK_DOCS, teacher, progress)
        ShardsManifest.read(folder).check(teacher.card.name, teacher.card.fingerprint, teacher.dim)
        progress.phase("loading embeddings", total=state.n_docs)
        with VectorFile(work / WORK_VECTORS, writable=True) as out:
            rows = fill_vectors(folder, work / WORK_DOCS, out)
        progress.advance(rows)
    except (ShardError, RuntimeError) as exc:
        raise BuildError(str(exc)) from exc
    state.vectors_filled = True
    state.embed_seconds += time.perf_counter() - started
    state.save(work)


def _embed_student(
    work: Path,
    state: BuildState,
    student: StudentSide,
    dtype: VectorsDtype,
    cache: EmbeddingCache | None,
    settings: EmbedSettings,
    progress: Progress,
) -> None:
    """The student view's rows, checkpointed like the teacher's (``student_chunks_done``)."""
    path = work / WORK_STUDENT_VECTORS
    if not path.exists() or state.student_chunks_done == 0:
        create_vectors(path, state.n_docs, student.encoder.dim, dtype).close()

    def record(chunks_done: int, seconds: float) -> None:
        state.student_chunks_done, state.student_embed_seconds = chunks_done, seconds

    label = f"embedding ({student.encoder.name}, student view)"
    resume = (state.student_chunks_done, state.student_embed_seconds, record)
    _embed_checkpointed(
        work, state, student.encoder, path, label, resume, cache, settings, progress
    )
