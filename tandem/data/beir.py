"""BEIR-format evaluation data: corpus, the queries of one split, and their judgments.

Train/test discipline lives here: only the queries that the requested split's
qrels judge are returned, so an evaluation can never score (or leak) the
queries of another split. The corpus is read with the document template the
indexer uses, ``(title + " " + text).strip()``, because that is the text the
teacher's cached vectors were computed from; a different template would both
miss the embedding cache and change the numbers.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tandem.data.corpus import BEIR_CORPUS, CorpusError, read_corpus
from tandem.errors import DataError

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]  # query id -> doc id -> graded relevance


class DatasetError(DataError, ValueError):
    """The folder is not a usable BEIR dataset for the requested split."""


@dataclass(frozen=True)
class Corpus:
    """Documents in file order; row i of every doc-vector matrix is ``ids[i]``."""

    ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class EvalSet:
    """A dataset's corpus plus the queries and judgments of exactly one split."""

    name: str
    split: str
    corpus: Corpus
    queries: dict[str, str]  # query id -> text, only the split's judged queries
    qrels: Qrels

    @property
    def query_ids(self) -> list[str]:
        return list(self.queries)

    @property
    def query_texts(self) -> list[str]:
        return list(self.queries.values())


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{line_no}: not JSON: {exc}") from exc


def load_corpus(folder: Path) -> Corpus:
    """Read ``corpus.jsonl`` through ``tandem.data.corpus``: one definition of ids and templates.

    Rows the indexer cannot use (no id, empty text) are skipped and logged by
    the reader, exactly as an index build with ``--skip-bad`` would.
    """
    if not (folder / BEIR_CORPUS).exists():
        raise DatasetError(f"{folder} has no {BEIR_CORPUS} (expected a BEIR folder)")
    ids: list[str] = []
    texts: list[str] = []
    try:
        for doc in read_corpus(folder, fmt="beir", skip_bad=True):
            ids.append(doc.id)
            texts.append(doc.text)
    except CorpusError as exc:
        raise DatasetError(str(exc)) from exc
    return Corpus(ids, texts)


def _str(value: object) -> str:
    return "" if value is None else str(value)


def load_qrels(folder: Path, split: str) -> Qrels:
    """``qrels/<split>.tsv`` (query-id, corpus-id, score; header optional)."""
    path = folder / "qrels" / f"{split}.tsv"
    if not path.exists():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DatasetError(f"{folder} has no qrels for split {split!r} (available: {available})")
    qrels: Qrels = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            if not row or row[0] == "query-id":
                continue
            if len(row) < 3:
                raise DatasetError(f"{path}: expected query-id, corpus-id, score; got {row}")
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    if not qrels:
        raise DatasetError(f"{path} holds no judgments")
    return qrels


def load_eval_set(folder: Path, split: str = "test") -> EvalSet:
    """Corpus, and the queries judged in ``split`` with their qrels (nothing from other splits)."""
    folder = Path(folder)
    qrels = load_qrels(folder, split)
    all_queries = {str(r["_id"]): _str(r.get("text")) for r in _jsonl(folder / "queries.jsonl")}
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise DatasetError(f"{len(missing)} judged queries have no text, e.g. {missing[:3]}")
    queries = {q: all_queries[q] for q in sorted(qrels, key=_natural)}
    corpus = load_corpus(folder)
    known = set(corpus.ids)
    unjudgeable = sum(d not in known for rels in qrels.values() for d in rels)
    if unjudgeable:
        logger.warning("%d judgments point at documents not in the corpus", unjudgeable)
    logger.info(
        "%s/%s: %d docs, %d queries, %d judgments",
        folder.name,
        split,
        len(corpus),
        len(queries),
        sum(map(len, qrels.values())),
    )
    return EvalSet(folder.name, split, corpus, queries, qrels)


def _natural(query_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, others after them, so reports list queries stably."""
    return (0, int(query_id)) if query_id.isdigit() else (1, query_id)
