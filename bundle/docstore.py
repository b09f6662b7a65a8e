"""The documents table of a bundle: internal id <-> external id, text, metadata.

Internal ids are dense row numbers (row i of the vectors, id i in every FAISS
variant); external ids are the corpus' own and never change across versions.
A published table is opened read-only and ``immutable`` (no locks, no journal
files next to a checksummed file), with one connection per thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tandem.data.corpus import Doc
from tandem.errors import InvalidInput

SCHEMA = """
CREATE TABLE docs (
    iid INTEGER PRIMARY KEY,
    ext_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL
)
"""
FilterValue = str | int | float | bool


@dataclass(frozen=True)
class Document:
    """A search hit's payload: external id, the embedded text, metadata."""

    id: str
    text: str
    metadata: dict[str, Any]


class DuplicateIdError(InvalidInput, ValueError):
    """An external id is already in the table."""

    def __init__(self, ext_id: str) -> None:
        super().__init__(f"duplicate id {ext_id!r}")
        self.ext_id = ext_id


@contextlib.contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """Report SQLite's "disk is full" and "disk I/O error" as an OSError naming the file."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # primary code of an extended one
        if code not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
            raise
        raise OSError(f"cannot write {path}: {exc}") from exc


class DocWriter:
    """Appends documents with consecutive internal ids; one transaction until ``close``."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path)
        with _disk_errors(self.path):
            self.db.execute("PRAGMA journal_mode=DELETE")
            if create:
                self.db.execute(SCHEMA)
            row = self.db.execute("SELECT COALESCE(MAX(iid) + 1, 0) FROM docs").fetchone()
        self.next_iid = int(row[0])

    def add(self, doc: Doc, dedupe: bool = False) -> bool:
        """Insert one document; False if its id exists and ``dedupe`` is set."""
        with _disk_errors(self.path):
            cur = self.db.execute(
                "INSERT INTO docs (iid, ext_id, text, metadata) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(ext_id) DO NOTHING",
                (self.next_iid, doc.id, doc.text, json.dumps(doc.metadata, ensure_ascii=False)),
            )
        if cur.rowcount == 0:
            if dedupe:
                return False
            raise DuplicateIdError(doc.id)
        self.next_iid += 1
        return True

    def add_many(self, docs: Iterable[Doc], dedupe: bool = False) -> tuple[int, int]:
        """Insert documents; returns (added, skipped as duplicates)."""
        added = skipped = 0
        for doc in docs:
            if self.add(doc, dedupe):
                added += 1
            else:
                skipped += 1
        return added, skipped

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def close(self) -> None:
        try:
            with _disk_errors(self.path):
                self.db.commit()
        finally:
            self.db.close()


def copy_subset(src: Path, dst: Path, keep: npt.NDArray[np.int64]) -> None:
    """Write a new table holding rows ``keep`` (ascending old iids) renumbered 0..len-1."""
    db = sqlite3.connect(dst)
    try:
        with _disk_errors(dst):
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute(SCHEMA)
            db.execute("ATTACH DATABASE ? AS src", (f"file:{src}?mode=ro&immutable=1",))
            db.execute("CREATE TEMP TABLE keep (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
            db.executemany(
                "INSERT INTO temp.keep (old, new) VALUES (?, ?)",
                ((int(old), new) for new, old in enumerate(keep)),
            )
            db.execute(
                "INSERT INTO main.docs (iid, ext_id, text, metadata) "
                "SELECT k.new, d.ext_id, d.text, d.metadata FROM temp.keep k "
                "JOIN src.docs d ON d.iid = k.old ORDER BY k.new"
            )
            db.commit()
            db.execute("DETACH DATABASE src")
    finally:
        db.close()


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)


class DocReader:
    """Read-only access to a published table, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._db().execute("SELECT COUNT(*) FROM docs").fetchone()  # fail early if unreadable

    def __enter__(self) -> DocReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = _connect_ro(self.path)
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def count(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def get(self, iids: Sequence[int]) -> list[Document]:
        """Documents in the order asked; raises KeyError for unknown ids."""
        wanted = [int(i) for i in iids]
        found: dict[int, Document] = {}
        for chunk in _chunked(sorted(set(wanted)), 500):
            marks = ",".join("?" * len(chunk))
            rows = self._db().execute(
                f"SELECT iid, ext_id, text, metadata FROM docs WHERE iid IN ({marks})", chunk
            )
            for iid, ext_id, text, meta in rows:
                found[iid] = Document(ext_id, text, json.loads(meta))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"internal id(s) {missing[:5]} not in the bundle")
        return [found[i] for i in wanted]

    def texts(self, iids: Sequence[int]) -> list[str]:
        return [d.text for d in self.get(iids)]

    def lookup(self, ext_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Internal ids for external ids, -1 where unknown."""
        found: dict[str, int] = {}
        for chunk in _chunked(list(dict.fromkeys(ext_ids)), 500):
            marks = ",".join("?" * len(chunk))
            rows = self._db().execute(
                f"SELECT ext_id, iid FROM docs WHERE ext_id IN ({marks})", chunk
            )
            found.update(rows)
        return np.array([found.get(e, -1) for e in ext_ids], dtype=np.int64)

    def ext_ids(self) -> Iterator[tuple[int, str]]:
        yield from self._db().execute("SELECT iid, ext_id FROM docs ORDER BY iid")

    def filter(self, equals: dict[str, FilterValue]) -> npt.NDArray[np.int64]:
        """Internal ids whose metadata has every key equal to its value (ascending)."""
        clauses, args = [], []
        for key, value in equals.items():
            if '"' in key or not key:
                raise ValueError(f"unsupported metadata key {key!r}")
            clauses.append("json_extract(metadata, ?) = ?")
            args += [f'$."{key}"', value]
        where = " AND ".join(clauses) or "1"
        rows = self._db().execute(f"SELECT iid FROM docs WHERE {where} ORDER BY iid", args)
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def close(self) -> None:
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()


def _chunked(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def length_order(path: Path) -> npt.NDArray[np.int64]:
    """Internal ids sorted by text length (ties by id): similar lengths batch with less padding."""
    db = _connect_ro(path)
    try:
        rows = db.execute("SELECT iid FROM docs ORDER BY length(text), iid")
        return np.fromiter((r[0] for r in rows), dtype=np.int64)
    finally:
        db.close()
