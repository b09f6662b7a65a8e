"""Teacher embeddings made elsewhere, as Parquet shards: the schema and the loader.

Embedding a large corpus is the expensive step of a build, and it need not
run inside ``tandem index build``: a Ray job (``--engine ray``), a Spark job
or another team's pipeline may write the vectors, and the builder assembles
the bundle from them (``--from-embeddings SHARDS/``). A shard folder holds:

``embeddings.json``
    ``{"format": 1, "teacher": {"name": ..., "fingerprint": ...}, "dim": D}``:
    which teacher made the vectors. It is checked against the teacher the
    build names, as a bundle's fingerprint is checked against a student, so
    vectors from another model are refused instead of served.
``*.parquet``
    any number of files (any names) with two columns: ``id`` (string, the
    document's id in the corpus) and ``vector`` (list of float16 or float32,
    ``D`` values, L2-normalized, as the teacher's document encoder outputs).

Every corpus document must appear exactly once; unknown or repeated ids,
wrong lengths, non-finite or non-unit vectors are refused with the file
named. pyarrow is imported only here, when shards are read or written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tandem.bundle.docstore import DocReader
from tandem.bundle.vectorfile import VectorFile

SHARDS_FORMAT = 1
SHARDS_MANIFEST = "embeddings.json"
ID_COLUMN = "id"
VECTOR_COLUMN = "vector"
NORM_TOLERANCE = 1e-2  # float16 storage moves a unit norm by ~1e-3 at most
READ_BATCH_ROWS = 8192


class ShardError(ValueError):
    """Shards that cannot be assembled into a bundle; the message names the file."""


@dataclass(frozen=True)
class ShardsManifest:
    """Which teacher made the vectors of a shard folder, and their dimension."""

    teacher_name: str
    teacher_fingerprint: str
    dim: int

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": SHARDS_FORMAT,
            "teacher": {"name": self.teacher_name, "fingerprint": self.teacher_fingerprint},
            "dim": self.dim,
        }
        tmp = folder / f".{SHARDS_MANIFEST}.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, folder / SHARDS_MANIFEST)

    @classmethod
    def read(cls, folder: Path) -> ShardsManifest:
        path = folder / SHARDS_MANIFEST
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != SHARDS_FORMAT:
                raise ShardError(f"{path}: format {raw.get('format')!r}, expected {SHARDS_FORMAT}")
            teacher = raw["teacher"]
            return cls(str(teacher["name"]), str(teacher["fingerprint"]), int(raw["dim"]))
        except FileNotFoundError:
            raise ShardError(
                f"{folder} has no {SHARDS_MANIFEST}: write one naming the teacher "
                '({"format": 1, "teacher": {"name": ..., "fingerprint": ...}, "dim": D})'
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, ShardError):
                raise
            raise ShardError(f"{path} is malformed: {exc}") from exc

    def check(self, teacher_name: str, teacher_fingerprint: str, dim: int) -> None:
        """Refuse vectors from another teacher or of another dimension."""
        if self.dim != dim:
            raise ShardError(
                f"the shards hold {self.dim}-dim vectors, teacher {teacher_name} makes {dim}"
            )
        if self.teacher_fingerprint != teacher_fingerprint:
            raise ShardError(
                f"the shards were embedded by {self.teacher_name} "
                f"({self.teacher_fingerprint[:12]}), not by {teacher_name} "
                f"({teacher_fingerprint[:12]}): embed with the same teacher export"
            )


def shard_files(folder: Path) -> list[Path]:
    """The Parquet files of a shard folder, sorted by name (hidden temp files excluded)."""
    return sorted(p for p in Path(folder).glob("*.parquet") if not p.name.startswith("."))


def write_shard(path: Path, ids: Sequence[str], vectors: npt.NDArray[Any]) -> None:
    """Write one shard atomically (temp file + rename): a shard on disk is always complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vecs = np.ascontiguousarray(vectors, dtype=np.float16)  # (n, dim)
    n, dim = vecs.shape
    values = pa.array(vecs.reshape(-1), type=pa.float16())
    column = pa.FixedSizeListArray.from_arrays(values, dim)
    table = pa.table({ID_COLUMN: pa.array(list(ids), type=pa.string()), VECTOR_COLUMN: column})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def shard_rows(path: Path) -> int:
    """Rows in a shard, from its footer (nothing else is read)."""
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path} is not a readable Parquet file: {exc}") from exc


def read_shard(path: Path, dim: int) -> Iterator[tuple[list[str], npt.NDArray[np.float32]]]:
    """(ids, (n, dim) float32 vectors) batch by batch; schema errors name the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ShardError(f"{path} is not a readable Parquet file: {exc}") from exc
    names = set(file.schema_arrow.names)
    if not {ID_COLUMN, VECTOR_COLUMN} <= names:
        raise ShardError(
            f"{path} has columns {sorted(names)}; shards need {ID_COLUMN!r} (string) "
            f"and {VECTOR_COLUMN!r} (list of float16/float32)"
        )
    for batch in file.iter_batches(READ_BATCH_ROWS, columns=[ID_COLUMN, VECTOR_COLUMN]):
        ids = [str(x) for x in batch.column(ID_COLUMN).to_pylist()]
        vectors = _vectors(batch.column(VECTOR_COLUMN), len(ids), dim, path)
        yield ids, vectors


def _vectors(column: Any, n: int, dim: int, path: Path) -> npt.NDArray[np.float32]:
    import pyarrow as pa

    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        raise ShardError(f"{path}: column {VECTOR_COLUMN!r} is {column.type}, not a list")
    if column.null_count:
        raise ShardError(f"{path}: {column.null_count} row(s) have no vector")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    if flat.size != n * dim:
        raise ShardError(f"{path}: vectors must have {dim} values each (the teacher's dim)")
    return np.asarray(flat, dtype=np.float32).reshape(n, dim)


def fill_vectors(folder: Path, docs: Path, out: VectorFile) -> int:
    """Write every shard row into ``out`` at its document's internal id; returns rows read.

    Refuses ids that are not in ``docs``, ids given twice, and documents left
    without a vector, so a bundle never has a row of zeros.
    """
    n_docs, dim = out.shape
    seen = np.zeros(n_docs, dtype=bool)
    files = shard_files(folder)
    if not files:
        raise ShardError(f"{folder} has no .parquet shards")
    with DocReader(docs) as reader:
        for path in files:
            for ids, vectors in read_shard(path, dim):
                iids = reader.lookup(ids)
                unknown = [ids[i] for i in np.flatnonzero(iids < 0)[:3]]
                if unknown:
                    raise ShardError(f"{path}: id(s) {unknown} are not in the corpus")
                if seen[iids].any() or np.unique(iids).size != iids.size:
                    twice = [ids[i] for i in range(len(ids)) if seen[iids[i]]][:3] or ids[:1]
                    raise ShardError(f"{path}: id(s) {twice} have more than one vector")
                _check_values(vectors, path)
                out.write_rows(iids, vectors)
                seen[iids] = True
    missing = np.flatnonzero(~seen)
    if missing.size:
        with DocReader(docs) as reader:
            names = [d.id for d in reader.get(missing[:3].tolist())]
        raise ShardError(f"{missing.size} document(s) have no vector in {folder}, e.g. {names}")
    out.flush()
    return int(seen.sum())


def _check_values(vectors: npt.NDArray[np.float32], path: Path) -> None:
    if not np.isfinite(vectors).all():
        raise ShardError(f"{path}: vectors contain NaN or infinity")
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise ShardError(
            f"{path}: {bad.size} vector(s) are not unit length (e.g. norm {norms[bad[0]]:.3f}); "
            "write the teacher's L2-normalized document embeddings"
        )
