"""`tandem eval` end to end on a tiny BEIR folder with the real ONNX teacher and student."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import typer
from tandem.bundle.format import open_bundle
from tandem.evaluation.cli import eval_command
from tandem.evaluation.modes import plan_modes
from tandem.indexer.build import build_bundle
from tandem.models.embedding_cache import EmbeddingCache
from tandem.models.encoder import Encoder
from typer.testing import CliRunner

from tandem.data.corpus import read_corpus
from tests.support.evaluation import aligned_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def self_aligned(
    teacher_dir: Path, teacher: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The teacher presented as a student aligned to itself: asymmetric must equal symmetric."""
    return aligned_copy(
        teacher_dir, tmp_path_factory.mktemp("aligned") / "t", teacher, "self-aligned"
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def invoke(args: list[str]) -> str:
    app = typer.Typer()
    app.command()(eval_command)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_eval_end_to_end_and_second_run_reuses_embeddings(
    tiny_beir: Path,
    teacher_dir: Path,
    student_dir: Path,
    self_aligned: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))  # a fresh embedding cache
    out = tmp_path / "report"
    args = [
        "--dataset", str(tiny_beir), "--teacher", str(teacher_dir),
        "--student", str(student_dir), "--student", str(self_aligned),
        "--oversample", "1,4", "--latency-queries", "3", "--out", str(out),
    ]  # fmt: skip
    invoke(args)
    for name in ("report.md", "results.csv", "ndcg_vs_bytes.png", "ndcg_vs_latency.png"):
        assert (out / name).stat().st_size > 0, name
    rows = read_rows(out / "results.csv")
    by = {(r["mode"], r["label"]): r for r in rows}

    teacher_exact = by[("teacher-symmetric", "f32-768")]
    assert float(teacher_exact["ndcg_at_10"]) > 0.8  # the queries paraphrase their documents
    assert {r["n_queries"] for r in rows} == {"5"}  # the two train queries are never scored
    assert float(teacher_exact["bytes_per_doc"]) >= 768 * 4
    assert float(by[("teacher-symmetric", "bin-768")]["bytes_per_doc"]) < 768 * 4 / 16
    assert by[("teacher-symmetric", "bin-768 → rescore ×4")]["oversample"] == "4"
    assert ("teacher-symmetric", "f32-768 → rescore ×4") not in by  # exact search is not rescored

    # The self-aligned "student" is the teacher: asymmetric equals teacher-symmetric row by row.
    for (mode, label), row in by.items():
        if mode == "asymmetric":
            twin = by[("teacher-symmetric", label)]
            for metric in ("ndcg_at_10", "recall_at_100", "mrr_at_10"):
                assert float(row[metric]) == pytest.approx(float(twin[metric]))

    student_rows = [r for r in rows if r["mode"] == "student-symmetric"]
    assert {"f32-384", "bin-384", "f32-384-hnsw"} <= {r["label"] for r in student_rows}
    unaligned = [r for r in rows if r["mode"] == "asymmetric-unaligned"]
    assert [r["status"] for r in unaligned] == ["n/a"] and "384-d" in unaligned[0]["note"]

    report = (out / "report.md").read_text()
    assert "## Recommended variant" in report and "★" in report
    assert "not applicable" in report
    assert "No published number is known" in report  # "tiny" has no reference

    caches = sorted((tmp_path / "home" / "embeddings").glob("*.sqlite"))
    sizes = {p.name: len(EmbeddingCache(p.stem, 1, p.parent)) for p in caches}
    assert sorted(sizes.values()) == [25, 25]  # teacher and student: 20 docs + 5 test queries

    built = sorted(p.name.split("-")[0:3] for p in (tmp_path / "home" / "eval-indexes").iterdir())
    assert ["f32", "768", "hnsw"] in built  # graphs are kept for the next run

    invoke(args)  # second run: every embedding comes from the cache
    again = {(r["mode"], r["label"]): r for r in read_rows(out / "results.csv")}
    assert {p.name: len(EmbeddingCache(p.stem, 1, p.parent)) for p in caches} == sizes
    for key, row in by.items():
        assert again[key]["ndcg_at_10"] == row["ndcg_at_10"]


def test_student_aligned_to_another_teacher_is_not_applicable(
    student: Encoder, student_dir: Path, teacher: Encoder, tmp_path: Path
) -> None:
    other = Encoder(aligned_copy(student_dir, tmp_path / "s", student, "student-for-itself"))
    plans = plan_modes(teacher, [other])
    assert [(p.mode, p.reason is None) for p in plans] == [
        ("teacher-symmetric", True),
        ("asymmetric", False),
        ("fused", False),
    ]
    assert "aligned to all-MiniLM-L6-v2" in (plans[1].reason or "")


def test_eval_on_a_bundle_measures_its_variant_files(
    tiny_beir: Path,
    teacher: Encoder,
    teacher_dir: Path,
    student_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    version = build_bundle(read_corpus(tiny_beir), tmp_path / "bundle", teacher, ["bin-768"])
    common = [
        "--dataset", str(tiny_beir), "--teacher", str(teacher_dir),
        "--variants", "f32-768,bin-768", "--oversample", "4", "--latency-queries", "2",
    ]  # fmt: skip
    invoke([*common, "--out", str(tmp_path / "plain")])
    invoke([*common, "--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "served")])
    plain = {r["label"]: r for r in read_rows(tmp_path / "plain" / "results.csv")}
    served = {r["label"]: r for r in read_rows(tmp_path / "served" / "results.csv")}
    assert plain.keys() == served.keys() == {"f32-768", "bin-768", "bin-768 → rescore ×4"}
    with open_bundle(version) as bundle:
        stored = bundle.manifest.variants["bin-768"].bytes / bundle.n_docs
    assert float(served["bin-768"]["bytes_per_doc"]) == pytest.approx(stored, rel=1e-4)
    for label, row in plain.items():  # float16 stored vectors rank these 20 docs the same way
        assert float(served[label]["ndcg_at_10"]) == pytest.approx(float(row["ndcg_at_10"]))

    app = typer.Typer()
    app.command()(eval_command)
    wrong = [*common, "--teacher", str(student_dir), "--bundle", str(tmp_path / "bundle")]
    result = CliRunner().invoke(app, [*wrong, "--out", str(tmp_path / "wrong")])
    assert result.exit_code == 2 and "was built by all-mpnet-base-v2" in result.output
