"""`tandem models align-report` on a tiny BEIR folder with the real teacher and students."""

from __future__ import annotations

from pathlib import Path

import pytest
from tandem.evaluation.align_report import alignment_report
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder
from typer.testing import CliRunner

from tandem.cli import app
from tandem.data.beir import load_eval_set
from tests.support.evaluation import aligned_copy

pytestmark = pytest.mark.slow


def test_report_compares_unaligned_adapter_and_a_perfect_student(
    tiny_beir: Path,
    teacher_dir: Path,
    teacher: Encoder,
    student: Encoder,
    aligned_student_dir: Path,
    aligned_student: Encoder,
    tmp_path: Path,
) -> None:
    # The teacher presented as a student aligned to itself: the ceiling, exactly.
    perfect = Encoder(aligned_copy(teacher_dir, tmp_path / "self", teacher, "self-aligned"))
    report = alignment_report(
        load_eval_set(tiny_beir, "test"), teacher, [student, aligned_student, perfect]
    )
    cos = {c.student: c for c in report.cosines}

    raw = cos[student.name]
    assert raw.method == "unaligned" and raw.eval_query is None and "384-d" in raw.note

    adapter = cos[aligned_student.name]
    card = ModelCard.load(aligned_student_dir).aligned_to
    assert card is not None and card.heldout_cosine is not None
    assert adapter.method == "adapter" and adapter.n_texts == card.n_texts
    assert adapter.heldout_query == card.heldout_cosine["query"]
    assert adapter.eval_query is not None and 0.5 < adapter.eval_query < 0.99

    assert cos["self-aligned"].eval_query == pytest.approx(1.0, abs=1e-5)

    # One full-dimension row per (mode, query encoder); truncations are not this report's.
    keys = [(r.mode, r.query_encoder) for r in report.retrieval]
    assert sorted(keys) == sorted(
        [
            ("teacher-symmetric", teacher.name),
            ("student-symmetric", student.name),
            ("asymmetric", aligned_student.name),
            ("asymmetric", "self-aligned"),
        ]
    )
    by = {key: r for key, r in zip(keys, report.retrieval, strict=True)}
    assert by[("teacher-symmetric", teacher.name)].of_teacher == 1.0
    self_row = by[("asymmetric", "self-aligned")]
    assert self_row.ndcg_at_10 == pytest.approx(by[("teacher-symmetric", teacher.name)].ndcg_at_10)
    assert 0.0 < by[("asymmetric", aligned_student.name)].ndcg_at_10 <= 1.0


def test_cli_writes_the_markdown_report(
    tiny_beir: Path,
    teacher_dir: Path,
    student_dir: Path,
    aligned_student_dir: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "align.md"
    args = [
        "models", "align-report", "--dataset", str(tiny_beir), "--teacher", str(teacher_dir),
        "--student", str(student_dir), "--student", str(aligned_student_dir), "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    text = out.read_text()
    assert "## Cosine to the teacher" in text and "## Retrieval: nDCG@10" in text
    assert "| asymmetric |" in text and "| teacher-symmetric |" in text
    assert "tandem models align-report --dataset" in text  # reproducible


def test_cli_refuses_a_missing_split(
    tiny_beir: Path, teacher_dir: Path, aligned_student_dir: Path, tmp_path: Path
) -> None:
    args = [
        "models", "align-report", "--dataset", str(tiny_beir), "--split", "dev",
        "--teacher", str(teacher_dir), "--student", str(aligned_student_dir),
        "--out", str(tmp_path / "a.md"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "dev" in result.output
    assert not (tmp_path / "a.md").exists()
