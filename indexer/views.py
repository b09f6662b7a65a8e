"""The student view: the bundle's documents embedded by the raw student too.

Fused scoring searches two document spaces with one student forward pass
(``tandem.bundle.fused``). The second space is a *view*: full-precision
vectors plus variants, row for row the same documents as the teacher's. Every
writer keeps the views in step: ``build --student`` embeds both, ``add``
embeds new documents in both, ``delete`` compacts both, ``add-variant``
hardlinks the views unchanged, and ``add-view`` adds one to an existing
bundle (re-running it after a crash takes committed chunks from the cache).

The student embeds a corpus about 10x faster than the teacher and a binary
384-d variant is 48 bytes per document, so the view is cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tandem.bundle.docstore import DocReader, length_order
from tandem.bundle.format import (
    STUDENT_VIEW,
    Bundle,
    BundleStage,
    VariantInfo,
    VectorsDtype,
    ViewInfo,
    create_vectors,
    open_root,
    root_lock,
    view_vectors_file,
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
    EmbedSettings,
    NoProgress,
    Progress,
    build_variants,
    embed_rows,
    tandem_version,
)
from tandem.models.embedding_cache import EmbeddingCache
from tandem.models.encoder import Encoder

logger = logging.getLogger(__name__)

DEFAULT_FUSED_WEIGHT = 0.5


@dataclass(frozen=True)
class StudentSide:
    """The encoder of a student view and how to find it again.

    ``encoder`` is the raw student, or an aligned student run as its native
    output (``Encoder(..., output="native")``): both give the same vectors for
    an adapter-aligned student. ``fused_weight`` is the serving weight of the
    asymmetric cosine; ``weight_source`` says where it came from.
    """

    encoder: Encoder
    spec: str
    fused_weight: float = DEFAULT_FUSED_WEIGHT
    weight_source: str = "default"


def student_side(spec: str, folder: Path, weight: float | None = None) -> StudentSide:
    """Load a student for a view; an aligned student brings its label-free weight."""
    encoder = Encoder(folder, device="cpu", output="native")
    native = encoder.full_card.native
    if weight is not None:
        if not 0.0 <= weight <= 1.0:
            raise BuildError(f"--fused-weight must be between 0 and 1, got {weight}")
        return StudentSide(encoder, spec, weight, "given")
    if native is not None and native.fused_weight is not None:
        source = f"label-free, from {encoder.full_card.name}'s alignment"
        return StudentSide(encoder, spec, native.fused_weight, source)
    return StudentSide(encoder, spec)


def default_view_variants(dim: int) -> list[str]:
    """The teacher's defaults at the student's dimension: exact, int8 and binary."""
    return [f"f32-{dim}", f"int8-{dim}", f"bin-{dim}"]


def view_info(
    stage: BundleStage,
    side: StudentSide,
    dtype: VectorsDtype,
    variants: dict[str, VariantInfo],
    build: dict[str, Any],
) -> ViewInfo:
    card = side.encoder.card
    return ViewInfo(
        encoder_name=card.name,
        fingerprint=card.fingerprint,
        spec=side.spec,
        card=card.model_dump(mode="json") | {"fingerprint": card.fingerprint},
        dim=card.dim,
        normalized=card.normalize,
        vectors_dtype=dtype,
        vectors=view_vectors_file(STUDENT_VIEW, dtype),
        variants=variants,
        fused_weight=side.fused_weight,
        fused_weight_source=side.weight_source,
        build=build | {"precision": side.encoder.precision, "tandem_version": tandem_version()},
    )


def check_student(info: ViewInfo, student: Encoder) -> None:
    """New rows of a view must come from the encoder that made the others."""
    if student.card.fingerprint != info.fingerprint:
        raise BuildError(
            f"the student view was embedded by {info.encoder_name} "
            f"(fingerprint {info.fingerprint[:12]}), not by {student.card.name} "
            f"({student.card.fingerprint[:12]}): pass --student {info.spec}"
        )


def embed_view(
    stage: BundleStage,
    side: StudentSide,
    n_docs: int,
    dtype: VectorsDtype,
    settings: EmbedSettings,
    cache: EmbeddingCache | None,
    progress: Progress,
    copy_from: Bundle | None = None,
) -> VectorFile:
    """The stage's student vectors: rows copied from ``copy_from``'s view, the rest embedded.

    Rows are embedded in order of text length from the stage's documents, one
    checkpoint chunk at a time through the cache (a re-run after a crash finds
    the committed chunks there).
    """
    out = create_vectors(
        stage.view_vectors_path(STUDENT_VIEW, dtype), n_docs, side.encoder.dim, dtype
    )
    start = 0
    if copy_from is not None and (old_view := copy_from.view(STUDENT_VIEW)) is not None:
        with old_view.vector_rows() as old:
            for block in range(0, copy_from.n_docs, VARIANT_CHUNK):
                out.write_block(block, old.read_block(block, block + VARIANT_CHUNK))
        start = copy_from.n_docs
    rows = length_order(stage.docs_path())
    rows = rows[rows >= start]
    progress.phase(f"embedding ({side.encoder.name}, student view)", total=int(rows.size))
    with DocReader(stage.docs_path()) as reader:
        embed_rows(
            side.encoder,
            lambda r: reader.texts(r.tolist()),
            rows,
            out,
            cache,
            settings,
            progress,
        )
    return out


def extend_view(
    stage: BundleStage, parent: Bundle, vectors: VectorFile, progress: Progress
) -> dict[str, VariantInfo]:
    """Add the view's new rows to each of the parent view's indexes."""
    view = parent.view(STUDENT_VIEW)
    assert view is not None  # callers check
    infos: dict[str, VariantInfo] = {}
    n_new = len(vectors) - parent.n_docs
    for name in view.variant_names():
        spec = view.spec(name)
        progress.phase(f"{view.qualified(name)} (add)", total=n_new)
        started = time.perf_counter()
        index = read_index(spec, view.variant_path(name), mmap=False)
        reserve_codes(index, len(vectors))
        add_vectors(spec, index, vectors, VARIANT_CHUNK, progress.advance, start=parent.n_docs)
        write_index(spec, index, stage.view_variant_path(STUDENT_VIEW, name))
        params = dict(view.info.variants[name].params)
        params["added_after_training"] = params.get("added_after_training", 0) + n_new
        infos[name] = stage.variant_info(
            name, int(index.ntotal), time.perf_counter() - started, params, view=STUDENT_VIEW
        )
        del index
    return infos


def compact_view(
    stage: BundleStage, parent: Bundle, keep: np.ndarray[Any, Any], progress: Progress
) -> dict[str, ViewInfo]:
    """The parent's views restricted to rows ``keep`` (renumbered), variants rebuilt."""
    out: dict[str, ViewInfo] = {}
    for name, view in parent.views.items():
        info = view.info
        vectors = create_vectors(
            stage.view_vectors_path(name, info.vectors_dtype),
            int(keep.size),
            info.dim,
            info.vectors_dtype,
        )
        progress.phase(f"copying {name} vectors", total=int(keep.size))
        with vectors, view.vector_rows() as old:
            for start in range(0, keep.size, VARIANT_CHUNK):
                rows = keep[start : start + VARIANT_CHUNK]
                vectors.write_block(start, old.read_rows(rows))
                progress.advance(int(rows.size))
            specs = [view.spec(v) for v in view.variant_names()]
            variants = build_variants(stage, specs, vectors, progress, view=name)
        out[name] = info.model_copy(update={"variants": variants})
    return out


def add_view(
    root: Path,
    side: StudentSide,
    variants: Sequence[str] | None = None,
    *,
    vectors_dtype: VectorsDtype | None = None,
    settings: EmbedSettings | None = None,
    cache: EmbeddingCache | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> Path:
    """Publish a version with a student view of every document (teacher files hardlinked)."""
    from tandem.indexer.update import _child_build, _publish_child

    settings = settings or EmbedSettings()
    progress = progress or NoProgress()
    if use_cache and cache is None:
        cache = EmbeddingCache.for_encoder(side.encoder)
    root = Path(root)
    specs = parse_variants(
        list(variants or default_view_variants(side.encoder.dim)), side.encoder.dim
    )
    with root_lock(root):
        parent = open_root(root)
        try:
            existing = parent.view(STUDENT_VIEW)
            if existing is not None:
                raise BuildError(
                    f"bundle {parent.version} already has a student view "
                    f"(by {existing.info.encoder_name}); build a new bundle to change students"
                )
            dtype = vectors_dtype or parent.manifest.vectors_dtype
            with BundleStage(root) as stage:
                stage.link_unchanged(parent, parent.variant_names())
                started = time.perf_counter()
                with embed_view(
                    stage, side, parent.n_docs, dtype, settings, cache, progress
                ) as vectors:
                    embed_seconds = time.perf_counter() - started
                    view_variants = build_variants(
                        stage, specs, vectors, progress, view=STUDENT_VIEW
                    )
                info = view_info(
                    stage, side, dtype, view_variants, {"embed_seconds": round(embed_seconds, 3)}
                )
                build = _child_build(
                    parent, "add-view", added_view=STUDENT_VIEW, student=side.encoder.card.name
                )
                return Path(
                    _publish_child(
                        stage,
                        parent,
                        parent.n_docs,
                        dict(parent.manifest.variants),
                        build,
                        views={STUDENT_VIEW: info},
                    )
                )
        finally:
            parent.close()
