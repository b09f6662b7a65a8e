"""What an index variant is, and how to build, load and query one.

A variant is one FAISS index over the teacher's vectors, named after what it
stores: ``f32-768`` (exact inner product), ``f32-256`` (Matryoshka-truncated
to 256 dims, re-normalized), ``int8-768`` (scalar quantizer, 4x smaller),
``bin-768`` (sign bits, Hamming, 32x smaller), ``-hnsw`` for graph variants
and ``ivfpq-768`` (inverted lists + product quantization) for corpora whose
flat codes would not fit in RAM. Every variant is derived from the stored
full-dimension vectors, so new variants never need the teacher again.

This module knows nothing about file names inside a bundle (bundle.py does).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import faiss
import numpy as np
import numpy.typing as npt
from tandem.bundle.vectorfile import VectorFile

logger = logging.getLogger(__name__)

# Full-dim vectors read by row ranges: an array, a memmap or a VectorFile on disk.
Rows = npt.NDArray[Any] | VectorFile

VariantKind = Literal["f32", "int8", "bin", "ivfpq"]
KINDS: tuple[str, ...] = get_args(VariantKind)
HNSW_KINDS = ("f32", "int8", "bin")

# Graph settings: M=32 links per node is FAISS' recommended default for ~1M
# vectors; efConstruction=200 trades a slower build for recall that holds up
# at efSearch 64-128. They are recorded in the manifest with each variant.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
# IVF-PQ: 16 dims per sub-quantizer keeps PQ distortion moderate (48 bytes per
# 768-d vector); training uses at most this many vectors, sampled with a fixed seed.
IVFPQ_DIMS_PER_SUBQUANTIZER = 16
IVFPQ_MAX_TRAIN = 100_000
IVFPQ_SEED = 1234

_NAME = re.compile(r"^(?P<kind>[a-z0-9]+)-(?P<dim>\d+)(?P<hnsw>-hnsw)?$")

ProgressFn = Callable[[int], None]


class VariantError(ValueError):
    """A variant spec is malformed or does not fit the bundle; the message lists valid forms."""


def _valid_forms(full_dim: int | None) -> str:
    dim = full_dim or 768
    return (
        f"valid variants look like f32-{dim}, f32-256, int8-{dim}, bin-{dim}, "
        f"f32-{dim}-hnsw, int8-{dim}-hnsw, bin-{dim}-hnsw, ivfpq-{dim} "
        f"(kind one of {', '.join(KINDS)}; dim <= {dim}; bin dims a multiple of 8)"
    )


@dataclass(frozen=True)
class VariantSpec:
    """A parsed variant name: storage kind, dimension after truncation, graph or not."""

    kind: VariantKind
    dim: int
    hnsw: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.dim}" + ("-hnsw" if self.hnsw else "")

    @property
    def is_binary(self) -> bool:
        return self.kind == "bin"

    @classmethod
    def parse(cls, name: str, full_dim: int) -> VariantSpec:
        """Parse and validate ``kind-dim[-hnsw]`` against the teacher's dimension."""
        match = _NAME.match(name.strip().lower())
        if match is None:
            raise VariantError(f"cannot parse variant {name!r}: {_valid_forms(full_dim)}")
        kind, dim, hnsw = match["kind"], int(match["dim"]), bool(match["hnsw"])
        if kind not in KINDS:
            raise VariantError(
                f"unknown variant kind {kind!r} in {name!r}: {_valid_forms(full_dim)}"
            )
        if not 1 <= dim <= full_dim:
            raise VariantError(
                f"variant {name!r} asks for {dim} dims but the teacher has {full_dim}: "
                f"{_valid_forms(full_dim)}"
            )
        if kind == "bin" and dim % 8:
            raise VariantError(f"binary variant {name!r} needs a dim that is a multiple of 8")
        if hnsw and kind not in HNSW_KINDS:
            raise VariantError(f"{kind} has no -hnsw form ({name!r}): {_valid_forms(full_dim)}")
        if kind == "ivfpq" and dim < 8:
            raise VariantError(f"ivfpq variant {name!r} needs at least 8 dims")
        return cls(kind=kind, dim=dim, hnsw=hnsw)  # type: ignore[arg-type]


def parse_variants(names: list[str] | tuple[str, ...], full_dim: int) -> list[VariantSpec]:
    """Parse a list of names (comma-separated items allowed), refusing duplicates."""
    specs: list[VariantSpec] = []
    for item in names:
        for raw in item.split(","):
            if not raw.strip():
                continue
            spec = VariantSpec.parse(raw, full_dim)
            if spec in specs:
                raise VariantError(f"variant {spec.name} is listed twice")
            specs.append(spec)
    if not specs:
        raise VariantError(f"no variants given: {_valid_forms(full_dim)}")
    return specs


def truncate_normalize(vectors: npt.NDArray[Any], dim: int) -> npt.NDArray[np.float32]:
    """Keep the first ``dim`` coordinates and re-normalize each row to unit length.

    Matryoshka truncation shortens the vector, so it is no longer unit-norm;
    inner product on un-renormalized prefixes would favour documents whose
    first coordinates happen to carry more mass. All-zero rows stay zero.
    """
    out = np.array(vectors[:, :dim], dtype=np.float32, copy=True)  # (n, dim)
    # einsum avoids the (n, dim) temporary np.linalg.norm would allocate.
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]  # (n, 1)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def query_codes(spec: VariantSpec, queries: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    """Full-dim float queries -> what ``index.search`` takes for this variant.

    float32 (n, dim) for float/quantized kinds; packed sign bits uint8
    (n, dim // 8) for binary.
    """
    queries = np.atleast_2d(np.asarray(queries))
    if spec.is_binary:
        # Sign bits do not change under positive scaling: no need to normalize.
        return np.packbits(queries[:, : spec.dim] > 0, axis=1)
    return truncate_normalize(queries, spec.dim)


def search_variant(
    spec: VariantSpec,
    index: Any,
    queries: npt.NDArray[np.float32],
    k: int,
    ef_search: int | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Search one variant; similarity scores (higher is better) and internal ids.

    Binary scores are ``1 - 2 * hamming / dim``, an estimate of the cosine.
    Missing results (fewer than k vectors) have id -1 and score -inf.
    ``ef_search`` applies to HNSW variants only and is passed per call, so
    concurrent searches never mutate the shared index.
    """
    if k < 1:
        raise VariantError(f"k must be at least 1, got {k}")
    xq = query_codes(spec, queries)
    params = None
    if spec.hnsw and ef_search is not None:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in faiss stubs
        params.efSearch = max(int(ef_search), k)
    D, labels = index.search(xq, k, params=params)  # (n, k) each
    ids = labels.astype(np.int64, copy=False)
    if spec.is_binary:
        scores = (1.0 - 2.0 * D.astype(np.float32) / spec.dim).astype(np.float32)
    else:
        scores = D.astype(np.float32, copy=False)
    scores[ids < 0] = -np.inf
    return scores, ids


def _chunks(n: int, chunk: int) -> range:
    return range(0, n, max(1, chunk))


def _ivfpq_shape(n: int, dim: int) -> tuple[int, int, int]:
    """(nlist, m, nbits) for n vectors: ~4*sqrt(n) lists with >= 39 training points each."""
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    nbits = max(1, min(8, int(math.log2(max(n, 2)))))
    m = max(1, dim // IVFPQ_DIMS_PER_SUBQUANTIZER)
    while dim % m:
        m -= 1
    return nlist, m, nbits


def _empty_index(spec: VariantSpec, n: int) -> tuple[Any, dict[str, Any]]:
    mip = faiss.METRIC_INNER_PRODUCT
    qt8 = faiss.ScalarQuantizer.QT_8bit
    params: dict[str, Any] = {"metric": "hamming" if spec.is_binary else "inner_product"}
    index: Any  # one of six FAISS classes; faiss' stubs disagree with some constructors
    if spec.kind == "f32":
        index = (
            faiss.IndexHNSWFlat(spec.dim, HNSW_M, mip) if spec.hnsw else faiss.IndexFlatIP(spec.dim)
        )
    elif spec.kind == "int8":
        index = (
            faiss.IndexHNSWSQ(spec.dim, qt8, HNSW_M, mip)  # type: ignore[arg-type]  # stubs: qtype
            if spec.hnsw
            else faiss.IndexScalarQuantizer(spec.dim, qt8, mip)
        )
        params["qtype"] = "QT_8bit"
    elif spec.kind == "bin":
        index = (
            faiss.IndexBinaryHNSW(spec.dim, HNSW_M)
            if spec.hnsw
            else faiss.IndexBinaryFlat(spec.dim)
        )
    else:
        nlist, m, nbits = _ivfpq_shape(n, spec.dim)
        quantizer = faiss.IndexFlatIP(spec.dim)
        index = faiss.IndexIVFPQ(quantizer, spec.dim, nlist, m, nbits, mip)
        index.own_fields = True
        quantizer.this.disown()  # type: ignore[attr-defined]  # SWIG: the IVF index frees it
        # Small corpora train codebooks on fewer than FAISS' advised 39 points per
        # centroid; more centroids still quantize better than fewer, so only the
        # warning is silenced.
        index.cp.min_points_per_centroid = 1
        index.pq.cp.min_points_per_centroid = 1
        # nprobe is stored in the file: every list up to 16, then 1/64 of them.
        index.nprobe = min(nlist, max(16, nlist // 64))
        params.update(nlist=nlist, m=m, nbits=nbits, nprobe=int(index.nprobe))
    if spec.hnsw:
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        params.update(M=HNSW_M, efConstruction=HNSW_EF_CONSTRUCTION, efSearch=HNSW_EF_SEARCH)
    return index, params


def _train(spec: VariantSpec, index: Any, vectors: Rows, chunk: int) -> dict[str, Any]:
    """Train quantizers without holding all vectors in RAM."""
    n = vectors.shape[0]
    if spec.kind == "int8":
        # QT_8bit trains a per-dimension [min, max] range (RangeStat RS_minmax),
        # so training on the two rows [mins, maxs] gathered chunk by chunk is
        # exactly training on all vectors, at the memory cost of one chunk.
        lo = np.full(spec.dim, np.inf, dtype=np.float32)
        hi = np.full(spec.dim, -np.inf, dtype=np.float32)
        for start in _chunks(n, chunk):
            part = truncate_normalize(vectors[start : start + chunk], spec.dim)
            lo = np.minimum(lo, part.min(axis=0))
            hi = np.maximum(hi, part.max(axis=0))
        index.train(np.stack([lo, hi]))
        return {"trained_on": n}
    if spec.kind == "ivfpq":
        rng = np.random.default_rng(IVFPQ_SEED)
        size = min(n, IVFPQ_MAX_TRAIN)
        rows = np.sort(rng.choice(n, size=size, replace=False))
        index.train(truncate_normalize(vectors[rows], spec.dim))
        return {"trained_on": size}
    return {}


def encode_for_index(spec: VariantSpec, vectors: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Rows of full-dim vectors -> what ``index.add`` takes (same transform as queries)."""
    return query_codes(spec, vectors)


def reserve_codes(index: Any, n_total: int) -> None:
    """Allocate a flat index's code buffer once for ``n_total`` vectors.

    Flat indexes append codes to a std::vector; growing it chunk by chunk
    reallocates, briefly holding the old and the doubled buffer (up to 3x the
    final index). ``IndexFlatCodes.add`` resizes to exactly ``ntotal + n``,
    which keeps a larger capacity, so one resize up front removes every
    reallocation. Other index types are left alone.
    """
    if not isinstance(index, faiss.IndexFlatCodes):
        return  # binary flat appends with insert(), so a resize would leave a zero prefix
    if n_total > index.ntotal:
        index.codes.resize(n_total * index.code_size)


def add_vectors(
    spec: VariantSpec,
    index: Any,
    vectors: Rows,
    chunk: int = 65536,
    on_progress: ProgressFn | None = None,
    start: int = 0,
) -> None:
    """Append rows ``start:`` of full-dim vectors to a trained index, chunk by chunk.

    ``vectors`` may be an array, a memmap or anything sliceable by row ranges
    (e.g. :class:`tandem.bundle.vectorfile.VectorFile`); only one chunk is in RAM.
    """
    for begin in range(start, vectors.shape[0], max(1, chunk)):
        part = vectors[begin : begin + chunk]
        index.add(encode_for_index(spec, part))
        if on_progress is not None:
            on_progress(int(part.shape[0]))


def build_index_with_params(
    spec: VariantSpec,
    vectors: Rows,
    chunk: int = 65536,
    on_progress: ProgressFn | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build a variant and return it with the parameters worth recording."""
    n = int(vectors.shape[0])
    if vectors.ndim != 2 or vectors.shape[1] < spec.dim:
        raise VariantError(
            f"variant {spec.name} needs vectors with >= {spec.dim} dims, got shape {vectors.shape}"
        )
    if n == 0:
        raise VariantError(f"cannot build variant {spec.name} over zero vectors")
    index, params = _empty_index(spec, n)
    params.update(_train(spec, index, vectors, chunk))
    reserve_codes(index, n)
    add_vectors(spec, index, vectors, chunk, on_progress)
    return index, params


def build_index(
    spec: VariantSpec, vectors: Rows, chunk: int = 65536
) -> faiss.Index | faiss.IndexBinary:
    """Build a variant from full-dim vectors (memmap and float16 are fine), chunk by chunk."""
    index: faiss.Index | faiss.IndexBinary = build_index_with_params(spec, vectors, chunk)[0]
    return index


def write_index(spec: VariantSpec, index: Any, path: Path) -> None:
    """Write a variant; a failed write (disk full, file-size limit) is an OSError naming it."""
    try:
        if spec.is_binary:
            faiss.write_index_binary(index, str(path))
        else:
            faiss.write_index(index, str(path))
    except RuntimeError as exc:
        # FAISS reports a short write as "... write error in PATH: n != m (strerror)".
        reason = re.search(r"\(([^()]+)\)\s*$", str(exc))
        raise OSError(f"cannot write {path}: {reason[1] if reason else exc}") from exc


# Tried in order: zero-copy mmap of flat codes (FAISS >= 1.11), classic mmap, plain read.
_MMAP_FLAGS = (
    ("mmap_ifc", getattr(faiss, "IO_FLAG_MMAP_IFC", None)),
    ("mmap", faiss.IO_FLAG_MMAP),
)


def read_index(spec: VariantSpec, path: Path, mmap: bool = True) -> Any:
    """Load a variant, memory-mapped where FAISS supports it so processes share pages.

    Memory-mapped indexes are read-only; pass ``mmap=False`` to get one that can
    be added to.
    """
    reader = faiss.read_index_binary if spec.is_binary else faiss.read_index
    if mmap:
        for label, flag in _MMAP_FLAGS:
            if flag is None:
                continue
            try:
                index = reader(str(path), flag | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError as exc:
                logger.debug("%s: %s load failed (%s), trying next", path.name, label, exc)
                continue
            logger.debug("loaded %s with %s", path.name, label)
            return index
    return reader(str(path))
