"""Incremental updates: add documents, delete documents, add variants.

Each operation derives a new bundle version from the current one and
publishes it beside the old one (a server swaps when it reloads). External
ids never change; the teacher embeds only documents that are new, and
everything else comes from the stored vectors:

- *add* appends rows: existing internal ids are unchanged, the new vectors
  are added to each variant as FAISS allows (trained quantizers keep the
  ranges/centroids learned at build time);
- *delete* compacts: remaining documents are renumbered in their old order
  and every variant is rebuilt from their stored vectors, so the result
  equals a fresh build of the remaining documents;
- *add-variant* hardlinks every existing file and writes only the new index.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tandem.bundle.docstore import DocReader, DocWriter, DuplicateIdError, copy_subset, length_order
from tandem.bundle.format import (
    STUDENT_VIEW,
    Bundle,
    BundleStage,
    VariantInfo,
    ViewInfo,
    create_vectors,
    open_root,
    root_lock,
)
from tandem.bundle.variants import (
    add_vectors,
    parse_variants,
    read_index,
    reserve_codes,
    write_index,
)
from tandem.bundle.vectorfile import VectorFile
from tandem.indexer.build import (
    VARIANT_CHUNK,
    BuildError,
    DocLike,
    EmbedSettings,
    NoProgress,
    Progress,
    build_variants,
    embed_rows,
    tandem_version,
    teacher_identity,
)
from tandem.indexer.views import (
    StudentSide,
    check_student,
    compact_view,
    embed_view,
    extend_view,
)
from tandem.models.embedding_cache import EmbeddingCache
from tandem.models.encoder import Encoder

from tandem.data.corpus import CorpusStats, as_docs

logger = logging.getLogger(__name__)


def _check_teacher(parent: Bundle, teacher: Encoder) -> None:
    if teacher.card.fingerprint != parent.manifest.teacher_fingerprint:
        raise BuildError(
            f"bundle {parent.version} was built by {parent.manifest.teacher_name} "
            f"(fingerprint {parent.manifest.teacher_fingerprint[:12]}), not by {teacher.card.name} "
            f"({teacher.card.fingerprint[:12]}): new documents must be embedded by the same teacher"
        )
    built_with = parent.manifest.build.get("teacher", {}).get("precision", "fp32")
    if teacher.precision != built_with:
        raise BuildError(
            f"bundle {parent.version} was embedded at {built_with} precision, "
            f"the teacher runs at {teacher.precision}: use --precision {built_with}"
        )


def _child_build(parent: Bundle, operation: str, **extra: Any) -> dict[str, Any]:
    """The new version's build record: the parent's settings plus this operation and history."""
    old = parent.manifest.build
    history = list(old.get("history", [])) + [
        {
            "version": parent.version,
            "operation": old.get("operation"),
            "n_docs": parent.n_docs,
            "created_at": parent.manifest.created_at,
        }
    ]
    return {
        "operation": operation,
        "parent": parent.version,
        "teacher": old.get("teacher"),
        "corpus": old.get("corpus"),
        "settings": old.get("settings"),
        **extra,
        "history": history,
        "tandem_version": tandem_version(),
    }


def _publish_child(
    stage: BundleStage,
    parent: Bundle,
    n_docs: int,
    variants: dict[str, VariantInfo],
    build: dict[str, Any],
    views: dict[str, ViewInfo] | None = None,
) -> Path:
    m = parent.manifest
    return stage.publish(
        teacher_name=m.teacher_name,
        teacher_fingerprint=m.teacher_fingerprint,
        teacher_card=m.teacher_card,
        dim=m.dim,
        normalized=m.normalized,
        n_docs=n_docs,
        vectors_dtype=m.vectors_dtype,
        variants={name: variants[name] for name in variants},
        build=build,
        students=m.students,
        views=views if views is not None else {},
    )


def add_documents(
    root: Path,
    docs: Iterable[DocLike],
    teacher: Encoder,
    *,
    dedupe: bool = False,
    settings: EmbedSettings | None = None,
    cache: EmbeddingCache | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
    corpus_info: dict[str, Any] | None = None,
    corpus_stats: CorpusStats | None = None,
    student: StudentSide | None = None,
    student_cache: EmbeddingCache | None = None,
) -> Path:
    """Publish a version with ``docs`` appended; only they are embedded.

    Ids already in the bundle are an error unless ``dedupe`` (then they are
    skipped). With nothing new to add, the current version is returned as is.
    An interrupted add is simply re-run: committed chunks come from the cache.
    A bundle with a student view needs ``student``: new documents are embedded
    in both views, so their rows stay in step.
    """
    settings = settings or EmbedSettings()
    progress = progress or NoProgress()
    if use_cache and cache is None:
        cache = EmbeddingCache.for_encoder(teacher)
    root = Path(root)
    with root_lock(root):
        parent = open_root(root)
        try:
            _check_teacher(parent, teacher)
            view = parent.view(STUDENT_VIEW)
            if view is not None:
                if student is None:
                    raise BuildError(
                        f"bundle {parent.version} has a student view by "
                        f"{view.info.encoder_name}: new documents must be embedded by it too "
                        f"(pass --student {view.info.spec})"
                    )
                check_student(view.info, student.encoder)
            with BundleStage(root) as stage:
                n_total, skipped = _append_docs(stage, parent, docs, dedupe, progress)
                if n_total == parent.n_docs:
                    logger.info("nothing new to add (%d existing id(s) skipped)", skipped)
                    return parent.path
                started = time.perf_counter()
                with _vectors_with_new_rows(stage, parent, n_total) as vectors:
                    new_rows = length_order(stage.docs_path())
                    new_rows = new_rows[new_rows >= parent.n_docs]
                    progress.phase("embedding", total=int(new_rows.size))
                    with DocReader(stage.docs_path()) as reader:
                        embed_rows(
                            teacher,
                            lambda rows: reader.texts(rows.tolist()),
                            new_rows,
                            vectors,
                            cache,
                            settings,
                            progress,
                        )
                    embed_seconds = time.perf_counter() - started
                    infos = _extend_variants(stage, parent, vectors, progress)
                views: dict[str, ViewInfo] = {}
                if view is not None and student is not None:
                    if use_cache and student_cache is None:
                        student_cache = EmbeddingCache.for_encoder(student.encoder)
                    student_vectors = embed_view(
                        stage,
                        student,
                        n_total,
                        view.info.vectors_dtype,
                        settings,
                        student_cache,
                        progress,
                        copy_from=parent,
                    )
                    with student_vectors:
                        view_variants = extend_view(stage, parent, student_vectors, progress)
                    views[STUDENT_VIEW] = view.info.model_copy(update={"variants": view_variants})
                stats = asdict(corpus_stats) if corpus_stats else {}
                build = _child_build(
                    parent,
                    "add",
                    n_added=n_total - parent.n_docs,
                    added_corpus=(corpus_info or {}) | {"stats": stats | {"n_existing": skipped}},
                    embed_seconds=round(embed_seconds, 3),
                    added_by=teacher_identity(teacher),
                )
                return _publish_child(stage, parent, n_total, infos, build, views)
        finally:
            parent.close()


def _append_docs(
    stage: BundleStage,
    parent: Bundle,
    docs: Iterable[DocLike],
    dedupe: bool,
    progress: Progress,
) -> tuple[int, int]:
    """Copy the parent's table into the stage and append docs; (new total, skipped)."""
    shutil.copyfile(parent.docs_file, stage.docs_path())
    os.chmod(stage.docs_path(), 0o644)
    writer = DocWriter(stage.docs_path(), create=False)
    skipped = 0
    progress.phase("reading new documents", total=0)
    try:
        for doc in as_docs(docs):
            if not writer.add(doc, dedupe):
                skipped += 1
            progress.advance(1)
    except DuplicateIdError as exc:
        raise BuildError(
            f"{exc}: it is already in bundle {parent.version} or repeated "
            "(pass --dedupe to skip ids that exist)"
        ) from None
    finally:
        writer.close()
    return writer.next_iid, skipped


def _vectors_with_new_rows(stage: BundleStage, parent: Bundle, n_total: int) -> VectorFile:
    """The stage's vectors file: the parent's rows copied, room for the new ones."""
    dtype = parent.manifest.vectors_dtype
    out = create_vectors(stage.vectors_path(dtype), n_total, parent.dim, dtype)
    with parent.vector_rows() as old:
        for start in range(0, parent.n_docs, VARIANT_CHUNK):
            out.write_block(start, old.read_block(start, start + VARIANT_CHUNK))
    return out


def _extend_variants(
    stage: BundleStage, parent: Bundle, vectors: VectorFile, progress: Progress
) -> dict[str, VariantInfo]:
    """Add the new rows to each of the parent's indexes (read in full, not mapped)."""
    infos: dict[str, VariantInfo] = {}
    n_new = len(vectors) - parent.n_docs
    for name in parent.variant_names():
        spec = parent.spec(name)
        progress.phase(f"variant {name} (add)", total=n_new)
        started = time.perf_counter()
        index = read_index(spec, parent.variant_path(name), mmap=False)
        reserve_codes(index, len(vectors))
        add_vectors(spec, index, vectors, VARIANT_CHUNK, progress.advance, start=parent.n_docs)
        write_index(spec, index, stage.variant_path(name))
        params = dict(parent.manifest.variants[name].params)
        params["added_after_training"] = params.get("added_after_training", 0) + n_new
        infos[name] = stage.variant_info(
            name, int(index.ntotal), time.perf_counter() - started, params
        )
        del index
    return infos


def delete_documents(
    root: Path,
    ids: Sequence[str],
    *,
    missing_ok: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Publish a version without the documents whose external ids are given.

    Unknown ids are an error unless ``missing_ok``. Remaining documents keep
    their external ids and vectors; internal ids are renumbered densely.
    """
    progress = progress or NoProgress()
    root = Path(root)
    with root_lock(root):
        parent = open_root(root)
        try:
            iids = parent.lookup(list(ids))
            unknown = [e for e, i in zip(ids, iids, strict=True) if i < 0]
            if unknown and not missing_ok:
                raise BuildError(
                    f"{len(unknown)} id(s) are not in bundle {parent.version}: "
                    f"{', '.join(repr(u) for u in unknown[:5])}"
                    f"{' …' if len(unknown) > 5 else ''} (pass --missing-ok to ignore them)"
                )
            drop = np.unique(iids[iids >= 0])
            if drop.size == 0:
                logger.info("no document to delete")
                return parent.path
            keep = np.setdiff1d(np.arange(parent.n_docs, dtype=np.int64), drop)
            if keep.size == 0:
                raise BuildError(
                    "deleting every document would leave an empty bundle; build a new one instead"
                )
            with BundleStage(root) as stage:
                copy_subset(parent.docs_file, stage.docs_path(), keep)
                dtype = parent.manifest.vectors_dtype
                out = create_vectors(stage.vectors_path(dtype), int(keep.size), parent.dim, dtype)
                progress.phase("copying vectors", total=int(keep.size))
                with out, parent.vector_rows() as old:
                    for start in range(0, keep.size, VARIANT_CHUNK):
                        rows = keep[start : start + VARIANT_CHUNK]
                        out.write_block(start, old.read_rows(rows))
                        progress.advance(int(rows.size))
                    specs = [parent.spec(name) for name in parent.variant_names()]
                    infos = build_variants(stage, specs, out, progress)
                views = compact_view(stage, parent, keep, progress)
                build = _child_build(
                    parent, "delete", n_deleted=int(drop.size), n_unknown_ignored=len(unknown)
                )
                return _publish_child(stage, parent, int(keep.size), infos, build, views)
        finally:
            parent.close()


def add_variants(
    root: Path,
    variants: Sequence[str],
    *,
    progress: Progress | None = None,
) -> Path:
    """Publish a version with new variants derived from the stored vectors (no teacher)."""
    progress = progress or NoProgress()
    root = Path(root)
    with root_lock(root):
        parent = open_root(root)
        try:
            specs = parse_variants(list(variants), parent.dim)
            present = [s.name for s in specs if s.name in parent.manifest.variants]
            if present:
                raise BuildError(
                    f"variant(s) {', '.join(present)} already in bundle {parent.version}"
                )
            with BundleStage(root) as stage:
                stage.link_unchanged(parent, parent.variant_names())
                views = stage.link_views(parent)
                infos = dict(parent.manifest.variants)
                with parent.vector_rows() as vectors:
                    infos.update(build_variants(stage, specs, vectors, progress))
                build = _child_build(parent, "add-variant", added_variants=[s.name for s in specs])
                return _publish_child(stage, parent, parent.n_docs, infos, build, views)
        finally:
            parent.close()
