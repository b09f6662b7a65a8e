"""Built variant indexes kept on disk, keyed by what they were built from.

Flat variants build in milliseconds, but an HNSW graph over a few thousand
768-d vectors takes seconds on a small CPU, which is most of a repeated
evaluation's run time. An index is reused only when the vectors (by content
hash), the variant name and the indexer's graph/quantizer settings are all
the same, so a changed corpus, encoder or build setting can never be served
from a stale file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tandem.bundle import variants
from tandem.bundle.variants import VariantSpec, build_index, read_index, write_index

from tandem.home import stable_hash, tandem_home

logger = logging.getLogger(__name__)

INDEX_CACHE_FORMAT = 1
_CHUNK_ROWS = 65536


def vectors_digest(vectors: npt.NDArray[np.floating]) -> str:
    """sha256 over shape, dtype and bytes, chunked so a memmap is never loaded whole."""
    digest = hashlib.sha256(f"{vectors.shape}{vectors.dtype}".encode())
    for start in range(0, vectors.shape[0], _CHUNK_ROWS):
        digest.update(np.ascontiguousarray(vectors[start : start + _CHUNK_ROWS]).tobytes())
    return digest.hexdigest()


def _build_settings() -> dict[str, Any]:
    names = [n for n in dir(variants) if n.startswith(("HNSW_", "IVFPQ_"))]
    return {n: getattr(variants, n) for n in sorted(names)}


class IndexCache:
    """``<root>/<variant>-<key>.faiss``; root defaults to ``$TANDEM_HOME/eval-indexes``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or tandem_home() / "eval-indexes"

    def path(self, spec: VariantSpec, digest: str) -> Path:
        key = stable_hash(INDEX_CACHE_FORMAT, spec.name, digest, _build_settings())
        return self.root / f"{spec.name}-{key}.faiss"

    def get_or_build(
        self, spec: VariantSpec, vectors: npt.NDArray[np.floating], digest: str
    ) -> tuple[Any, bool]:
        """(index, whether it came from disk); a new index is written atomically."""
        path = self.path(spec, digest)
        if path.exists():
            try:
                return read_index(spec, path, mmap=False), True
            except RuntimeError as exc:  # a truncated file from a crash: rebuild it
                logger.warning("cannot read cached index %s (%s): rebuilding", path, exc)
        index = build_index(spec, vectors)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".faiss")
        os.close(fd)
        try:
            write_index(spec, index, Path(tmp))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return index, False
