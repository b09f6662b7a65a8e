"""The int8 ranking guard and the int8 serving path, with the real ONNX student and teacher."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from tandem.evaluation.cli import eval_command
from tandem.indexer.build import build_bundle
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder
from tandem.models.pairing import PairingError
from tandem.toolchain.int8_guard import guard_int8, guard_ladder
from tandem.toolchain.quantize import LADDER, quantize_best
from typer.testing import CliRunner

from tandem.data.corpus import read_corpus

pytestmark = pytest.mark.slow

TEXTS = [
    "insulin",
    "How do plants make sugar from sunlight?",
    "Rising ocean temperatures cause coral bleaching on tropical reefs, and the damage is "
    "spreading faster than reefs recover; " * 6,
    "bees",
    "What makes lava come out of a mountain?",
]


@pytest.fixture(scope="module")
def int8_student(aligned_student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the aligned student with a fresh int8 graph (no verdict yet)."""
    folder = tmp_path_factory.mktemp("int8") / "student"
    shutil.copytree(aligned_student_dir, folder)
    quantize_best(folder)
    return folder


@pytest.fixture(scope="module")
def teacher_bundle(
    tiny_beir: Path, teacher: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("guard") / "bundle"
    build_bundle(read_corpus(tiny_beir), root, teacher, ["f32-768"])
    return root


def test_int8_vectors_do_not_depend_on_batch_mates(int8_student: Path) -> None:
    encoder = Encoder(int8_student, precision="int8", device="cpu")
    alone = np.vstack([encoder.encode([t], "query") for t in TEXTS])
    together = encoder.encode(TEXTS, "query")
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    # What one padded run of the same graph would have given: the long text's
    # range requantizes the short ones (this is what row-by-row avoids).
    batch = encoder.tokenize(TEXTS, "query")
    (name,) = [o.name for o in encoder.session.get_outputs()][:1]
    (padded,) = encoder.session.run(
        [name], {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    )
    assert np.abs(padded - alone).max() > 1e-4


def test_guard_scores_both_precisions_and_decides_the_default(
    int8_student: Path, teacher_bundle: Path, tiny_beir: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    assert ModelCard.load(int8_student).serving_precision == "fp32"  # not judged yet
    quality = guard_int8(int8_student, tiny_beir, teacher_bundle, max_drop=1.0)
    card = ModelCard.load(int8_student)
    assert card.int8 is not None and card.int8.quality == quality
    assert quality.n_queries == 5 and quality.dataset == "tiny"
    assert card.serving_precision == "int8"
    assert f"{quality.ndcg_int8:.4f}" in card.serving_reason()

    # The fp32 score is the one `tandem eval` reports for asymmetric exact search.
    out = tmp_path / "eval"
    app = typer.Typer()
    app.command()(eval_command)
    result = CliRunner().invoke(
        app,
        [
            "--dataset",
            str(tiny_beir),
            "--teacher",
            str(teacher_dir),
            "--student",
            str(int8_student),
            "--bundle",
            str(teacher_bundle),
            "--variants",
            "f32-768",
            "--oversample",
            "1",
            "--latency-queries",
            "2",
            "--weight-split",
            "",
            "--out",
            str(out),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    with open(out / "results.csv", newline="") as f:
        rows = [
            r for r in csv.DictReader(f) if r["mode"] == "asymmetric" and r["label"] == "f32-768"
        ]
    assert rows and float(rows[0]["ndcg_at_10"]) == pytest.approx(quality.ndcg_fp32, abs=1e-5)

    # A drop larger than allowed keeps fp32 the default, and says why.
    guard_int8(int8_student, tiny_beir, teacher_bundle, max_drop=quality.drop - 1e-3)
    card = ModelCard.load(int8_student)
    assert card.serving_precision == "fp32"
    assert "beyond" in card.serving_reason()


def test_guard_refuses_a_bundle_of_another_teacher(
    int8_student: Path, tiny_beir: Path, student: Encoder, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    build_bundle(read_corpus(tiny_beir), other, student, ["f32-384"])
    with pytest.raises(PairingError):
        guard_int8(int8_student, tiny_beir, other)


def test_the_ladder_stops_at_the_first_graph_that_keeps_the_ranking(
    int8_student: Path, teacher_bundle: Path, tiny_beir: Path
) -> None:
    quality, lines = guard_ladder(int8_student, tiny_beir, teacher_bundle, max_drop=1.0)
    card = ModelCard.load(int8_student)
    assert quality is not None and len(lines) == 1 and "passed" in lines[0]
    assert card.int8 is not None and card.int8.settings["ladder_step"] == LADDER[0][0]
    assert card.serving_precision == "int8"

    # Nothing can pass a negative allowance: every step is tried, fp32 stays the default.
    quality, lines = guard_ladder(int8_student, tiny_beir, teacher_bundle, max_drop=-1.0)
    assert quality is None and len(lines) == len(LADDER)
    assert all("failed" in line or "refused" in line for line in lines)
    assert ModelCard.load(int8_student).serving_precision == "fp32"
