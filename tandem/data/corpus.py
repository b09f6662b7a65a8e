"""Read a corpus into documents: JSONL, BEIR folders, CSV and Parquet.

Every reader yields :class:`Doc` with the text that will be embedded already
rendered, so the rest of the indexer never thinks about fields again. The
default rendering is ``(title + " " + text).strip()`` (just the text when
there is no title): it is exactly what the teacher's embedding cache is keyed
on for BEIR corpora, so a build over an already-embedded corpus costs nothing.

Bad rows fail loudly with ``file:line`` unless ``skip_bad`` is set, in which
case they are counted in :class:`CorpusStats` and reported at the end; the
same goes for duplicate ids and ``dedupe`` (the first occurrence wins).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any, Literal

from tandem.errors import DataError

logger = logging.getLogger(__name__)

CorpusFormat = Literal["auto", "jsonl", "beir", "csv", "parquet"]
BEIR_CORPUS = "corpus.jsonl"
ID_FIELDS = ("id", "_id", "doc_id", "docid")
MAX_EXAMPLES = 5


class CorpusError(DataError, ValueError):
    """The corpus cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Doc:
    """One document as the indexer sees it: external id, text to embed, metadata."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextFields:
    """Which fields make a document, and how its text is rendered.

    ``template`` is a ``str.format`` string over the row's fields, e.g.
    ``"{title}: {text}"``; without one, the text is ``title + " " + text``
    stripped. ``id_field=None`` tries id, _id, doc_id, docid in that order.
    """

    id_field: str | None = None
    text_field: str = "text"
    title_field: str | None = "title"
    template: str | None = None

    def render(self, row: Mapping[str, Any]) -> str:
        if self.template is not None:
            values = {k: "" if v is None else v for k, v in row.items()}
            missing = [f for f in _template_fields(self.template) if f not in values]
            if missing:
                raise _RowError(f"template field(s) {', '.join(missing)} missing")
            return self.template.format_map(values).strip()
        if self.text_field not in row:
            raise _RowError(f"no {self.text_field!r} field")
        text = row[self.text_field]
        if text is None or not isinstance(text, str):
            raise _RowError(f"field {self.text_field!r} is not a string")
        title = row.get(self.title_field, "") if self.title_field else ""
        if title is None:
            title = ""
        if not isinstance(title, str):
            raise _RowError(f"field {self.title_field!r} is not a string")
        return (title + " " + text).strip()

    def doc_id(self, row: Mapping[str, Any]) -> str:
        names = (self.id_field,) if self.id_field else ID_FIELDS
        for name in names:
            value = row.get(name)
            if value is None or isinstance(value, (dict, list, float)):
                continue
            text = str(value).strip()
            if text:
                return text
        raise _RowError(f"no usable id (looked for {', '.join(repr(n) for n in names)})")

    def consumed(self) -> set[str]:
        names = {self.id_field} if self.id_field else set(ID_FIELDS)
        if self.title_field:
            names.add(self.title_field)
        return names | {self.text_field, "metadata"}


@dataclass
class CorpusStats:
    """What a read did besides yielding documents; filled in while iterating."""

    n_docs: int = 0
    n_bad: int = 0
    n_duplicates: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)


class _RowError(Exception):
    """A single row is unusable; the reader adds file and line."""


def _template_fields(template: str) -> list[str]:
    return [
        name.split(".")[0].split("[")[0] for _, name, _, _ in Formatter().parse(template) if name
    ]


def detect_format(path: Path) -> CorpusFormat:
    if path.is_dir():
        if (path / BEIR_CORPUS).exists():
            return "beir"
        raise CorpusError(f"{path} is a folder without {BEIR_CORPUS} (not a BEIR dataset)")
    suffixes = "".join(path.suffixes[-2:]).lower()
    for fmt, ends in (("jsonl", (".jsonl", ".ndjson", ".json")), ("csv", (".csv", ".tsv"))):
        if suffixes.endswith(ends):
            return fmt  # type: ignore[return-value]
    if suffixes.endswith((".parquet", ".pq")):
        return "parquet"
    raise CorpusError(
        f"cannot tell the format of {path}: use .jsonl, .csv, .tsv, .parquet or a BEIR folder"
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | _RowError]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, _RowError(f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                yield line_no, _RowError(f"expected a JSON object, got {type(row).__name__}")
                continue
            yield line_no, row


def _csv_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | _RowError]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if reader.fieldnames is None:
            return
        for row in reader:
            # DictReader puts surplus cells under None and fills missing ones with None.
            if None in row or any(v is None for v in row.values()):
                names = ", ".join(reader.fieldnames)
                error = _RowError(f"expected {len(reader.fieldnames)} columns ({names})")
                yield reader.line_num, error
                continue
            yield reader.line_num, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | _RowError]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pyarrow is an optional dependency
        raise CorpusError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row


def _metadata(row: Mapping[str, Any], fields: TextFields, title: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    nested = row.get("metadata")
    if isinstance(nested, dict):
        meta.update(nested)
    elif isinstance(nested, str) and nested.strip():
        try:
            parsed = json.loads(nested)
        except json.JSONDecodeError as exc:
            raise _RowError("field 'metadata' is not a JSON object") from exc
        if not isinstance(parsed, dict):
            raise _RowError("field 'metadata' is not a JSON object")
        meta.update(parsed)
    for key, value in row.items():
        if key not in fields.consumed() and key not in meta and value is not None and value != "":
            meta[key] = value
    if title and "title" not in meta:
        meta["title"] = title
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise _RowError(f"metadata is not JSON-serialisable ({exc})") from exc
    return meta


def read_corpus(
    path: Path,
    fields: TextFields | None = None,
    fmt: CorpusFormat = "auto",
    skip_bad: bool = False,
    dedupe: bool = False,
    stats: CorpusStats | None = None,
) -> Iterator[Doc]:
    """Stream documents from a corpus file or BEIR folder.

    Raises CorpusError at the first bad row (``file:line: reason``) or the
    first duplicate id unless ``skip_bad`` / ``dedupe`` say to count and drop them.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path} does not exist")
    fields = fields or TextFields()
    stats = stats if stats is not None else CorpusStats()
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "beir":
        path = path / BEIR_CORPUS if path.is_dir() else path
        fmt = "jsonl"
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt](path)
    seen: set[str] = set()
    for line_no, row in rows:
        where = f"{path}:{line_no}" if fmt != "parquet" else f"{path}: row {line_no}"
        try:
            if isinstance(row, _RowError):
                raise row
            doc_id = fields.doc_id(row)
            text = fields.render(row)
            if not text:
                raise _RowError("empty text")
            title = row.get(fields.title_field) if fields.title_field else None
            doc = Doc(doc_id, text, _metadata(row, fields, title))
        except _RowError as exc:
            if not skip_bad:
                raise CorpusError(f"{where}: {exc} (pass --skip-bad to skip such rows)") from None
            stats.n_bad += 1
            stats.note(f"{where}: {exc}")
            continue
        if doc.id in seen:
            if not dedupe:
                raise CorpusError(
                    f"{where}: duplicate id {doc.id!r} (pass --dedupe to keep the first occurrence)"
                )
            stats.n_duplicates += 1
            stats.note(f"{where}: duplicate id {doc.id!r} dropped")
            continue
        seen.add(doc.id)
        stats.n_docs += 1
        yield doc
    if stats.n_bad or stats.n_duplicates:
        logger.warning(
            "%s: skipped %d bad row(s) and %d duplicate id(s)",
            path,
            stats.n_bad,
            stats.n_duplicates,
        )


def as_doc(item: Doc | Mapping[str, Any] | tuple[str, str]) -> Doc:
    """Accept a Doc, a mapping with id/text[/metadata], or an (id, text) pair."""
    if isinstance(item, Doc):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return Doc(str(item[0]), str(item[1]), {})
    if isinstance(item, Mapping):
        if "id" not in item or "text" not in item:
            raise CorpusError(f"document mapping needs 'id' and 'text', got keys {sorted(item)}")
        return Doc(str(item["id"]), str(item["text"]), dict(item.get("metadata") or {}))
    raise CorpusError(f"cannot make a document from {type(item).__name__}")


def as_docs(items: Iterable[Doc | Mapping[str, Any] | tuple[str, str]]) -> Iterator[Doc]:
    for item in items:
        yield as_doc(item)


def corpus_signature(path: Path) -> dict[str, Any]:
    """Identity of the corpus file(s) on disk, so a resumed build can tell they changed."""
    path = Path(path)
    target = path / BEIR_CORPUS if path.is_dir() else path
    st = target.stat()
    return {"path": str(target.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
