"""`tandem eval --backend milvus` scores a pushed bundle as FAISS scores the bundle itself."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import typer
from tandem.evaluation.cli import eval_command
from tandem.indexer.build import build_bundle
from tandem.indexer.push import push_bundle
from tandem.models.encoder import Encoder
from typer.testing import CliRunner

from tandem.data.corpus import read_corpus

pytestmark = pytest.mark.slow


def run_eval(args: list[str]) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(eval_command)
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output + repr(result.exception)


def rows(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "results.csv", newline="") as f:
        return {r["label"]: r for r in csv.DictReader(f) if r["mode"] == "teacher-symmetric"}


def test_eval_through_milvus_reproduces_the_faiss_scores(
    tiny_beir: Path, teacher: Encoder, teacher_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    build_bundle(read_corpus(tiny_beir), root, teacher, ["f32-768", "int8-768", "bin-768"])
    db = str(tmp_path / "lite.db")
    push_bundle(root, db, "tiny")
    common = [
        "--dataset", str(tiny_beir), "--teacher", str(teacher_dir), "--bundle", str(root),
        "--variants", "f32-768,int8-768,bin-768", "--oversample", "4", "--latency-queries", "2",
    ]  # fmt: skip
    code, out = run_eval([*common, "--out", str(tmp_path / "faiss")])
    assert code == 0, out
    code, out = run_eval(
        [*common, "--backend", "milvus", "--milvus-uri", db, "--collection", "tiny",
         "--out", str(tmp_path / "milvus")]
    )  # fmt: skip
    assert code == 0, out
    faiss_rows, milvus_rows = rows(tmp_path / "faiss"), rows(tmp_path / "milvus")
    for label in ("f32-768", "bin-768", "bin-768 → rescore ×4"):
        want, got = float(faiss_rows[label]["ndcg_at_10"]), float(milvus_rows[label]["ndcg_at_10"])
        assert got == pytest.approx(want, abs=1e-3), label
    assert milvus_rows["int8-768"]["status"] == "n/a"
    assert "not in the Milvus collection" in milvus_rows["int8-768"]["note"]

    code, out = run_eval(
        [*common, "--backend", "milvus", "--milvus-uri", db, "--collection", "absent",
         "--out", str(tmp_path / "absent")]
    )  # fmt: skip
    assert code == 2 and "no collection or alias 'absent'" in out
