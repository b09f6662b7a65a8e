"""`tandem data fetch`: checksum first, then an atomic unpack; a bad archive leaves nothing."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tandem.cli import app
from tandem.data.beir import load_eval_set
from tandem.data.fetch import BEIR_MD5, FetchError, fetch_dataset

DOCS = {
    "d1": ("Tides", "Ocean tides are caused mainly by the gravitational pull of the moon."),
    "d2": ("Glaciers", "Glaciers carve U-shaped valleys as they slowly flow downhill."),
    "d3": ("Espresso", "Espresso is brewed by forcing hot water through finely ground coffee."),
}
QUERIES = {"q1": "What pulls the oceans?", "q2": "How is espresso made?"}
QRELS = [("q1", "d1", 1), ("q2", "d3", 1)]


def beir_zip(path: Path, top: str, files: tuple[str, ...] = ("corpus", "queries", "qrels")) -> str:
    """A tiny BEIR dataset zipped the way BEIR ships them (one top folder); its sha256."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if "corpus" in files:
            rows = [{"_id": i, "title": t, "text": x} for i, (t, x) in DOCS.items()]
            zf.writestr(f"{top}/corpus.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        if "queries" in files:
            rows = [{"_id": i, "text": x} for i, x in QUERIES.items()]
            zf.writestr(f"{top}/queries.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        if "qrels" in files:
            lines = ["query-id\tcorpus-id\tscore"] + ["\t".join(map(str, r)) for r in QRELS]
            zf.writestr(f"{top}/qrels/test.tsv", "\n".join(lines) + "\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_verified_archive_is_unpacked_as_a_beir_folder(tmp_path: Path) -> None:
    digest = beir_zip(tmp_path / "tiny.zip", "tiny")
    data = tmp_path / "data"
    folder = fetch_dataset("tiny", data, (tmp_path / "tiny.zip").as_uri(), digest)
    assert folder == data / "tiny"
    assert sorted(p.name for p in data.iterdir()) == ["tiny"]  # no archive or stage left over
    eval_set = load_eval_set(folder, "test")
    assert set(eval_set.queries) == set(QUERIES)
    assert eval_set.qrels == {"q1": {"d1": 1}, "q2": {"d3": 1}}
    assert (folder / "corpus.jsonl").read_text().count("\n") == len(DOCS)


def test_a_checksum_mismatch_publishes_nothing(tmp_path: Path) -> None:
    beir_zip(tmp_path / "tiny.zip", "tiny")
    data = tmp_path / "data"
    wrong = "0" * 64
    with pytest.raises(FetchError, match=f"sha256 is [0-9a-f]{{64}}, expected {wrong}"):
        fetch_dataset("tiny", data, (tmp_path / "tiny.zip").as_uri(), wrong)
    assert list(data.iterdir()) == []


def test_known_datasets_are_checked_against_beirs_published_md5(tmp_path: Path) -> None:
    """Another archive served as scifact.zip is refused by the md5 BEIR publishes."""
    beir_zip(tmp_path / "scifact.zip", "scifact")
    data = tmp_path / "data"
    with pytest.raises(FetchError, match=f"md5 is [0-9a-f]{{32}}, expected {BEIR_MD5['scifact']}"):
        fetch_dataset("scifact", data, (tmp_path / "scifact.zip").as_uri())
    assert list(data.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "sha256", "message"),
    [
        ("tiny", None, "no published checksum for 'tiny'.*pass --sha256"),
        ("tiny", "abc", "--sha256 must be 64 hex digits"),
        ("../up", "0" * 64, "dataset name '../up'"),
    ],
)
def test_what_cannot_be_verified_is_not_downloaded(
    tmp_path: Path, name: str, sha256: str | None, message: str
) -> None:
    with pytest.raises(FetchError, match=message):
        fetch_dataset(name, tmp_path / "data", (tmp_path / "absent.zip").as_uri(), sha256)
    assert not (tmp_path / "data").exists()


def test_an_archive_that_is_not_a_beir_dataset_is_refused(tmp_path: Path) -> None:
    digest = beir_zip(tmp_path / "half.zip", "half", files=("queries", "qrels"))
    data = tmp_path / "data"
    with pytest.raises(FetchError, match="is not a BEIR dataset: no corpus.jsonl"):
        fetch_dataset("half", data, (tmp_path / "half.zip").as_uri(), digest)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    junk = hashlib.sha256(b"not a zip").hexdigest()
    with pytest.raises(FetchError, match="is not a zip archive"):
        fetch_dataset("junk", data, (tmp_path / "junk.zip").as_uri(), junk)
    assert list(data.iterdir()) == []


def test_an_unreachable_url_says_how_to_fetch_offline(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="cannot download .*pass --url file://"):
        fetch_dataset("tiny", tmp_path / "data", (tmp_path / "absent.zip").as_uri(), "0" * 64)
    assert list((tmp_path / "data").iterdir()) == []


def test_cli_fetches_into_tandem_data_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tandem data fetch` defaults to $TANDEM_DATA and reuses a folder already there."""
    digest = beir_zip(tmp_path / "tiny.zip", "tiny")
    monkeypatch.setenv("TANDEM_DATA", str(tmp_path / "datasets"))
    args = ["data", "fetch", "tiny", "--url", (tmp_path / "tiny.zip").as_uri(), "--sha256", digest]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output.strip() == str(tmp_path / "datasets" / "tiny")
    (tmp_path / "tiny.zip").unlink()  # present already: nothing is downloaded again
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    bad = CliRunner().invoke(app, ["data", "fetch", "other", "--url", "file:///nowhere.zip"])
    assert bad.exit_code == 2
    assert "no published checksum for 'other'" in bad.output
