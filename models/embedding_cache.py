"""A content-addressed store of embeddings, one SQLite file per encoder fingerprint.

Teacher passes are the most expensive thing tandem does (tens of minutes per
few thousand passages on a CPU). Every teacher embedding is stored here under
sha256(kind, text), so indexing, alignment and evaluation never embed the same
text twice, and an interrupted build resumes from what was committed. Commits
happen per chunk in WAL mode: a ``kill -9`` loses at most the chunk in flight.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tandem.models.encoder import Encoder, TextKind

from tandem.home import tandem_home


def text_key(text: str, kind: TextKind) -> bytes:
    return hashlib.sha256(f"{kind}\0{text}".encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    """Vectors of one encoder, keyed by text hash."""

    def __init__(self, fingerprint: str, dim: int, root: Path | None = None) -> None:
        root = root or tandem_home() / "embeddings"
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{fingerprint[:24]}.sqlite"
        self.dim = dim
        self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")
        self.db.commit()

    @classmethod
    def for_encoder(cls, encoder: Encoder, root: Path | None = None) -> EmbeddingCache:
        tag = encoder.card.fingerprint + ("" if encoder.precision == "fp32" else "-int8")
        return cls(tag, encoder.dim, root)

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, npt.NDArray[np.float32]]:
        found: dict[bytes, npt.NDArray[np.float32]] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk)
            for key, vec in rows:
                found[key] = np.frombuffer(vec, dtype=np.float32)
        return found

    def put_many(self, keys: Sequence[bytes], vectors: npt.NDArray[np.float32]) -> None:
        rows = [
            (k, np.ascontiguousarray(v, dtype=np.float32).tobytes())
            for k, v in zip(keys, vectors, strict=True)
        ]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        self.db.close()


def encode_cached(
    encoder: Encoder,
    texts: Sequence[str],
    kind: TextKind,
    cache: EmbeddingCache | None,
    chunk_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
    **encode_kwargs: int,
) -> npt.NDArray[np.float32]:
    """Embed texts, taking what the cache holds and committing new vectors per chunk."""
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    if cache is None:
        return encoder.encode(texts, kind, on_batch=on_progress, **encode_kwargs)
    keys = [text_key(t, kind) for t in texts]
    known = cache.get_many(keys)
    missing: list[int] = []
    for i, key in enumerate(keys):
        vec = known.get(key)
        if vec is None:
            missing.append(i)
        else:
            out[i] = vec
    if on_progress is not None and len(texts) - len(missing):
        on_progress(len(texts) - len(missing))
    missing.sort(key=lambda i: len(texts[i]))  # similar lengths per chunk: less padding
    for start in range(0, len(missing), chunk_size):
        idx = missing[start : start + chunk_size]
        vecs = encoder.encode([texts[i] for i in idx], kind, on_batch=on_progress, **encode_kwargs)
        cache.put_many([keys[i] for i in idx], vecs)
        out[idx] = vecs
    return out
