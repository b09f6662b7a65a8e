"""One document encoder's side of an evaluation: vectors, ids, variant indexes, exact scores."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from tandem.bundle.format import Bundle
from tandem.bundle.variants import VariantSpec
from tandem.evaluation.index_cache import IndexCache, vectors_digest
from tandem.models.encoder import Encoder

logger = logging.getLogger(__name__)

_MAX_SCORE_TABLE = 50_000_000  # query × doc products held for rescoring: 200 MB of float32
_CHUNK_ROWS = 65536


def default_variants(dim: int, matryoshka_dims: Sequence[int] = ()) -> list[str]:
    """Exact float, truncations, int8, binary, and HNSW over float and binary.

    Truncations: the ones the card says the model was trained for, plus dim/2
    and dim/4 (reported as not trained for it when the card does not list them).
    """
    truncated = sorted({d for d in matryoshka_dims if 0 < d < dim} | {dim // 2, dim // 4})
    names = [f"f32-{dim}", *(f"f32-{d}" for d in reversed(truncated)), f"int8-{dim}", f"bin-{dim}"]
    return names + [f"f32-{dim}-hnsw", f"bin-{dim}-hnsw"]


def untrained_truncation(spec: VariantSpec, full_dim: int, matryoshka_dims: Sequence[int]) -> bool:
    """A truncated variant of a model whose card does not list that dimension."""
    return spec.dim < full_dim and spec.dim not in matryoshka_dims


class DocSide:
    """One document encoder's vectors over the corpus and the variant indexes over them.

    Built from cached embeddings in corpus order, or from a published bundle
    (its memory-mapped vectors, its own ids and the variant files it holds), so
    that an evaluation can measure exactly the indexes a server would load.
    """

    def __init__(
        self,
        encoder: Encoder,
        vectors: npt.NDArray[np.floating],  # (n_docs, D), float32 or a float16 memmap
        doc_ids: Sequence[str],
        bundle: Bundle | None = None,
    ) -> None:
        self.encoder = encoder
        self.vectors = vectors
        self.doc_ids = list(doc_ids)
        self.bundle = bundle
        self.index_cache = IndexCache()
        self._indexes: dict[str, tuple[Any, float]] = {}
        self._scores: dict[str, npt.NDArray[np.float32]] = {}
        self._digest: str | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    def variant_names(self) -> list[str]:
        """Defaults for this dimension, plus whatever a bundle already holds."""
        names = default_variants(self.dim, self.encoder.card.matryoshka_dims)
        if self.bundle is not None:
            names += [n for n in self.bundle.variant_names() if n not in names]
        return names

    def index(self, spec: VariantSpec) -> tuple[Any, float]:
        """(index, bytes per doc), loaded or built once; bytes = the FAISS index, links included."""
        if spec.name not in self._indexes:
            start = time.perf_counter()
            if self.bundle is not None and spec.name in self.bundle.variant_names():
                index, origin = self.bundle.index(spec.name), f"bundle {self.bundle.version}"
                size = self.bundle.manifest.variants[spec.name].bytes
            else:
                if self._digest is None:
                    self._digest = vectors_digest(self.vectors)
                index, cached = self.index_cache.get_or_build(spec, self.vectors, self._digest)
                origin = "index cache" if cached else "a new build"
                size = _serialized_bytes(index)
            logger.info(
                "%s over %d docs from %s in %.1f s",
                spec.name,
                self.n_docs,
                origin,
                time.perf_counter() - start,
            )
            self._indexes[spec.name] = (index, size / max(self.n_docs, 1))
        return self._indexes[spec.name]

    def exact_scores(
        self, key: str, queries: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32] | None:
        """All query × document inner products, when small enough to hold (for rescoring).

        Rescoring 300 queries × 1,000 candidates by gathering 768-d rows reads
        ~1 GB per configuration; looking the same products up in one table
        computed once per query encoder is ~100× faster and gives the same scores.
        """
        if len(queries) * self.n_docs > _MAX_SCORE_TABLE:
            return None
        if key not in self._scores:
            table = np.empty((len(queries), self.n_docs), dtype=np.float32)  # (n_queries, n_docs)
            for start in range(0, self.n_docs, _CHUNK_ROWS):
                block = np.asarray(self.vectors[start : start + _CHUNK_ROWS], dtype=np.float32)
                table[:, start : start + len(block)] = queries @ block.T
            self._scores[key] = table
        return self._scores[key]


def _serialized_bytes(index: Any) -> int:
    if isinstance(index, faiss.IndexBinary):
        return int(faiss.serialize_index_binary(index).size)
    return int(faiss.serialize_index(index).size)
