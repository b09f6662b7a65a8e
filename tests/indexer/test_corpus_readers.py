"""Corpus readers: formats, text templates, bad rows named by line, duplicate ids."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tandem.data.corpus import CorpusError, CorpusStats, Doc, TextFields, as_doc, read_corpus
from tests.support.data import beir_dataset
from tests.support.index import corpus_rows, write_jsonl


def test_jsonl_reads_ids_text_and_metadata(tmp_path: Path) -> None:
    docs = list(read_corpus(write_jsonl(tmp_path / "c.jsonl", corpus_rows())))
    assert len(docs) == 40
    first = docs[0]
    assert first.id == "space-0"
    assert first.text == "Space The Moon orbits the Earth roughly once every twenty-seven days."
    assert first.metadata == {"topic": "space", "rank": 0, "even": True, "title": "Space"}


def test_default_template_is_title_space_text_stripped(tmp_path: Path) -> None:
    rows = [
        {"_id": "a", "title": "T", "text": "body "},
        {"_id": "b", "title": "", "text": " only body"},
        {"_id": "c", "text": "no title field"},
        {"_id": "d", "title": None, "text": "null title"},
    ]
    docs = list(read_corpus(write_jsonl(tmp_path / "c.jsonl", rows)))
    expected = [(r.get("title") or "") + " " + r["text"] for r in rows]
    assert [d.text for d in docs] == [e.strip() for e in expected]
    assert [d.id for d in docs] == ["a", "b", "c", "d"]


def test_beir_folder_texts_match_the_cached_teacher_keys() -> None:
    """The embedding cache holds SciFact under (title + ' ' + text).strip(): same texts here."""
    scifact = beir_dataset("scifact")
    with open(scifact / "corpus.jsonl") as f:
        raw = [json.loads(line) for line in islice(f, 200)]
    docs = list(islice(read_corpus(scifact), 200))
    assert [d.id for d in docs] == [r["_id"] for r in raw]
    assert [d.text for d in docs] == [(r.get("title", "") + " " + r["text"]).strip() for r in raw]


def test_template_and_field_flags(tmp_path: Path) -> None:
    rows = [{"doc": "x1", "headline": "Big news", "body": "Something happened.", "lang": "en"}]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    fields = TextFields(id_field="doc", text_field="body", title_field="headline")
    (doc,) = read_corpus(path, fields)
    assert doc == Doc("x1", "Big news Something happened.", {"lang": "en", "title": "Big news"})
    templated = TextFields(id_field="doc", template="{headline}: {body} [{lang}]")
    (doc,) = read_corpus(path, templated)
    assert doc.text == "Big news: Something happened. [en]"
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: template field\(s\) missing_field"):
        list(read_corpus(path, TextFields(id_field="doc", template="{missing_field}")))


def test_csv_tsv_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text(
        'id,title,text,year\n1,A,"first, with comma",2020\n2,,second,\n'
    )
    docs = list(read_corpus(tmp_path / "c.csv"))
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("1", "A first, with comma", {"year": "2020", "title": "A"}),
        ("2", "second", {}),
    ]
    (tmp_path / "c.tsv").write_text("id\ttext\nx\thello\n")
    assert [d.text for d in read_corpus(tmp_path / "c.tsv")] == ["hello"]
    table = pa.table({"id": [10, 11], "text": ["p one", "p two"], "score": [0.5, 1.5]})
    pq.write_table(table, tmp_path / "c.parquet")
    docs = list(read_corpus(tmp_path / "c.parquet"))
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("10", "p one", {"score": 0.5}),
        ("11", "p two", {"score": 1.5}),
    ]


BAD_JSONL = [
    '{"id": "1", "text": "fine"}',
    '{"id": "2", "text": "fine too"}',
    "{not json",
    '{"id": "4", "text": "ok"}',
    '{"id": "5"}',
    '["a list"]',
    '{"text": "no id"}',
    '{"id": "8", "title": "", "text": "   "}',
    '{"id": "9", "text": "last"}',
]


@pytest.mark.parametrize(
    ("lines", "line_no", "reason"),
    [
        (BAD_JSONL[:3], 3, "invalid JSON"),
        (BAD_JSONL[:2] + BAD_JSONL[4:5], 3, "no 'text' field"),
        (BAD_JSONL[:1] + BAD_JSONL[5:6], 2, "expected a JSON object"),
        (BAD_JSONL[:1] + BAD_JSONL[6:7], 2, "no usable id"),
        (BAD_JSONL[:1] + BAD_JSONL[7:8], 2, "empty text"),
    ],
)
def test_malformed_rows_name_file_and_line(
    tmp_path: Path, lines: list[str], line_no: int, reason: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError) as info:
        list(read_corpus(path))
    assert f"{path}:{line_no}: {reason}" in str(info.value)
    assert "--skip-bad" in str(info.value)


def test_skip_bad_counts_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_JSONL) + "\n")
    stats = CorpusStats()
    docs = list(read_corpus(path, skip_bad=True, stats=stats))
    assert [d.id for d in docs] == ["1", "2", "4", "9"]
    assert (stats.n_docs, stats.n_bad, stats.n_duplicates) == (4, 5, 0)
    assert stats.examples[0].startswith(f"{path}:3: invalid JSON")


def test_csv_row_with_wrong_column_count_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"multi\nline text"\n2,too,many\n')
    with pytest.raises(CorpusError, match=r"c\.csv:4: expected 2 columns"):
        list(read_corpus(path))


def test_duplicate_ids_fail_unless_deduped(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, {"id": "a", "text": "three"}]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(CorpusError, match=r"dup\.jsonl:3: duplicate id 'a'.*--dedupe"):
        list(read_corpus(path))
    stats = CorpusStats()
    docs = list(read_corpus(path, dedupe=True, stats=stats))
    assert [(d.id, d.text) for d in docs] == [("a", "one"), ("b", "two")]
    assert stats.n_duplicates == 1


def test_unknown_format_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "c.xml").write_text("<x/>")
    with pytest.raises(CorpusError, match="cannot tell the format"):
        list(read_corpus(tmp_path / "c.xml"))
    with pytest.raises(CorpusError, match="does not exist"):
        list(read_corpus(tmp_path / "nope.jsonl"))
    with pytest.raises(CorpusError, match="not a BEIR dataset"):
        list(read_corpus(tmp_path))


def test_as_doc_accepts_pairs_and_mappings() -> None:
    assert as_doc(("x", "text")) == Doc("x", "text", {})
    assert as_doc({"id": 3, "text": "t", "metadata": {"a": 1}}) == Doc("3", "t", {"a": 1})
    with pytest.raises(CorpusError, match="needs 'id' and 'text'"):
        as_doc({"text": "t"})
