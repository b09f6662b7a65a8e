"""`tandem eval` measures the fused mode as served, and reports both ways of choosing ``w``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import typer
from tandem.bundle.format import STUDENT_VIEW, open_bundle
from tandem.evaluation.cli import eval_command
from tandem.evaluation.metrics import evaluate, run_from_hits
from tandem.indexer.build import build_bundle
from tandem.indexer.views import student_side
from tandem.models.encoder import Encoder
from typer.testing import CliRunner

from tandem.data.beir import load_eval_set
from tandem.data.corpus import read_corpus


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_fused_rows_match_a_numpy_reference_and_the_weights_are_reported(
    tiny_beir: Path,
    teacher: Encoder,
    teacher_dir: Path,
    student: Encoder,
    aligned_student: Encoder,
    aligned_student_dir: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "bundle"
    side = student_side("test-sample-student", aligned_student_dir)
    build_bundle(read_corpus(tiny_beir), root, teacher, ["f32-768", "bin-768"], student=side,
                 student_variants=["bin-384"])  # fmt: skip
    out = tmp_path / "report"
    args = [
        "--dataset", str(tiny_beir), "--teacher", str(teacher_dir),
        "--student", str(aligned_student_dir), "--bundle", str(root),
        "--variants", "f32-768,bin-768", "--oversample", "4", "--latency-queries", "2",
        "--out", str(out),
    ]  # fmt: skip
    app = typer.Typer()
    app.command()(eval_command)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    by = {(r["mode"], r["label"]): r for r in _rows(out / "results.csv")}
    exact = by[("fused", "f32-768+student-f32-384")]
    funnel = by[("fused", "bin-768+student-bin-384 → rescore ×4")]
    weight = float(exact["weight"])
    assert weight == aligned_student.full_card.native.fused_weight  # type: ignore[union-attr]

    # Reference: brute-force fused scores over the whole corpus, in numpy.
    eval_set = load_eval_set(tiny_beir, "test")
    with open_bundle(root) as bundle:
        teacher_docs = np.asarray(bundle.vectors, dtype=np.float32)
        view = bundle.view(STUDENT_VIEW)
        assert view is not None
        student_docs = np.asarray(view.vectors, dtype=np.float32)
        doc_ids = bundle.external_ids()
        view_bytes = view.info.variants["bin-384"].bytes / bundle.n_docs
        teacher_bytes = bundle.manifest.variants["bin-768"].bytes / bundle.n_docs
    queries = eval_set.query_texts
    aligned_q = aligned_student.encode(queries, "query")
    native_q = student.encode(queries, "query")
    fused = weight * (aligned_q @ teacher_docs.T) + (1 - weight) * (native_q @ student_docs.T)
    top = np.argsort(-fused, axis=1, kind="stable")[:, :10]
    want = evaluate(eval_set.qrels, run_from_hits(eval_set.query_ids, top, doc_ids), ["ndcg@10"])
    assert float(exact["ndcg_at_10"]) == pytest.approx(want["ndcg@10"], abs=1e-4)
    # 20 documents: a 40-candidate first pass per view covers them all.
    assert float(funnel["ndcg_at_10"]) == pytest.approx(want["ndcg@10"], abs=1e-4)
    assert float(funnel["bytes_per_doc"]) == pytest.approx(teacher_bytes + view_bytes, rel=1e-4)
    assert float(funnel["latency_ms"]) > float(funnel["encode_ms"])

    report = (out / "report.md").read_text()
    assert "## Modes at a glance" in report
    assert f"label-free w = {weight}" in report
    assert "The train split's judgments would pick w = " in report
