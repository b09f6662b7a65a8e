"""``tandem index``: commands, the info table, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tandem.bundle.format import current_version_dir, open_bundle
from tandem.indexer.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


@pytest.mark.slow
def test_build_csv_with_skip_bad_then_maintain_it(tmp_path: Path) -> None:
    corpus = tmp_path / "notes.csv"
    corpus.write_text(
        "id,title,text,lang\n"
        "n1,Tides,The Moon's gravity pulls the oceans into tides.,en\n"
        "n2,Bees,Honey bees dance to tell others where flowers are.,en\n"
        "n3,broken row\n"
        "n4,Rust,Iron rusts when it reacts with oxygen and water.,en\n"
        "n5,,Lightning is a giant spark of static electricity.,fr\n"
    )
    root = tmp_path / "bundle"
    args = ["build", str(corpus), "--out", str(root), "--variants", "f32-768,bin-768"]
    code, out = invoke(*args)
    assert code == 1
    assert f"{corpus}:4: expected 4 columns" in out and "--skip-bad" in out
    assert not (root / "current").exists()

    code, out = invoke(*args, "--skip-bad", "--checkpoint-every", "2")
    assert code == 0, out
    assert "skipped 1 bad row(s)" in out and "(verified)" in out
    with open_bundle(root) as bundle:
        assert bundle.external_ids() == ["n1", "n2", "n4", "n5"]
        assert bundle.documents([3])[0].text == "Lightning is a giant spark of static electricity."
        assert bundle.filter_ids({"lang": "fr"}).tolist() == [3]
        assert bundle.manifest.build["corpus"]["stats"]["n_bad"] == 1

    code, out = invoke("info", str(root))
    assert code == 0
    for needle in ("v0001", "4 docs", "f32-768", "bin-768", "bytes/doc", "vectors f16", "total"):
        assert needle in out, (needle, out)
    code, out = invoke("info", str(root), "--json")
    assert code == 0 and json.loads(out)["n_docs"] == 4

    code, out = invoke("delete", str(root), "--ids", "n2,nope")
    assert code == 1 and "'nope'" in out and "--missing-ok" in out
    code, out = invoke("delete", str(root), "--ids", "n2", "--ids", "nope", "--missing-ok")
    assert code == 0 and "v0002" in out
    code, out = invoke("add-variant", str(root), "int8-768", "f32-128-hnsw")
    assert code == 0 and "v0003" in out
    code, out = invoke("add-variant", str(root), "f32-1000")
    assert code == 1 and "teacher has 768" in out

    added = tmp_path / "more.jsonl"
    added.write_text('{"id": "n9", "text": "Volcanic ash can ground aeroplanes."}\n')
    code, out = invoke("add", str(root), str(added))
    assert code == 0 and "v0004" in out, out
    with open_bundle(root) as bundle:
        assert bundle.external_ids() == ["n1", "n4", "n5", "n9"]
        assert set(bundle.variant_names()) == {"f32-768", "bin-768", "int8-768", "f32-128-hnsw"}

    code, out = invoke("verify", str(root))
    assert code == 0 and "ok" in out
    victim = current_version_dir(root) / "variants" / "int8-768.faiss"
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    code, out = invoke("verify", str(root))
    assert code == 1 and "variants/int8-768.faiss: checksum mismatch" in out


def test_user_errors_are_one_line_and_exit_one(tmp_path: Path) -> None:
    code, out = invoke("info", str(tmp_path))
    assert code == 1 and "neither a bundle root nor a bundle version" in out
    code, out = invoke("verify", str(tmp_path / "missing"))
    assert code == 1 and "error:" in out
    code, out = invoke("build", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "b"))
    assert code == 1 and "does not exist" in out
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "x"}\n')
    code, out = invoke("build", str(tmp_path / "c.jsonl"), "--variants", "f32-768,q4-768")
    assert code == 1 and "unknown variant kind 'q4'" in out
    code, out = invoke("delete", str(tmp_path))
    assert code == 1 and "no ids given" in out
