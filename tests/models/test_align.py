"""Alignment puts the student in the teacher's space, measurably, and says so in its card."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder
from tandem.models.pairing import PairingError, check_pair
from tandem.models.similarity import mean_cosine
from tandem.toolchain.align import (
    Adapter,
    AlignTexts,
    fit_adapter,
    paired_embeddings,
    pseudo_queries,
    split_rows,
)
from tandem.toolchain.alignment_job import run_alignment


def test_pseudo_queries_are_short_spans_of_the_passages() -> None:
    passages = [
        "Aspirin lowers the risk of heart attack. It also raises the risk of bleeding in the gut.",
        "The James Webb telescope observes in infrared. Its mirror has eighteen segments.",
    ]
    queries = pseudo_queries(passages, 6, seed=1)
    assert len(queries) == 6
    joined = " ".join(passages)
    for q in queries:
        assert 3 <= len(q.split()) <= 40
        assert all(word in joined for word in q.split())


def test_adapter_learns_the_pairing(
    student: Encoder, teacher: Encoder, sample_texts: AlignTexts
) -> None:
    """Held-out cosine beats a control fitted on shuffled pairs by a wide margin."""
    pairs = paired_embeddings(student, teacher, sample_texts)
    split = split_rows(pairs.kinds, seed=0)
    adapter = fit_adapter(pairs.student, pairs.teacher, split)
    held = split.heldout
    aligned = mean_cosine(adapter.apply(pairs.student[held]), pairs.teacher[held])
    shuffled = np.random.default_rng(0).permutation(len(pairs.teacher))
    control = fit_adapter(pairs.student, pairs.teacher[shuffled], split)
    baseline = mean_cosine(control.apply(pairs.student[held]), pairs.teacher[held])
    assert aligned > 0.6
    assert aligned > baseline + 0.15


def test_folded_adapter_equals_numpy(aligned_student: Encoder, student: Encoder) -> None:
    saved = np.load(aligned_student.folder / "adapter.npz")
    adapter = Adapter(saved["weight"], saved["bias"], lam=0.0)
    texts = ["who painted the Mona Lisa", "interest rates and inflation", "Zürich café"]
    expected = adapter.apply(student.encode(texts, "query"))
    got = aligned_student.encode(texts, "query")
    assert got.shape == (3, 768)
    assert np.sum(expected * got, axis=1).min() >= 0.9999


def test_card_records_the_alignment(aligned_student: Encoder, teacher: Encoder) -> None:
    aligned = aligned_student.card.aligned_to
    assert aligned is not None
    assert aligned.teacher_fingerprint == teacher.card.fingerprint
    assert aligned.method == "adapter"
    assert aligned.n_texts > 500
    assert {"query", "passage", "all"} <= set(aligned.heldout_cosine)
    assert aligned_student.card.dim == teacher.dim


def test_pairing_refuses_a_student_of_another_teacher(
    aligned_student: Encoder, student: Encoder, teacher: Encoder
) -> None:
    fingerprint = teacher.card.fingerprint
    check_pair(aligned_student.card, teacher.name, fingerprint)
    check_pair(teacher.card, teacher.name, fingerprint)
    with pytest.raises(PairingError, match="aligned to all-mpnet-base-v2"):
        check_pair(aligned_student.card, "other-teacher", "f" * 64)
    with pytest.raises(PairingError, match="not aligned"):
        check_pair(student.card, teacher.name, fingerprint)


def test_alignment_is_cached_by_inputs(
    aligned_student_dir: Path, student_dir: Path, teacher_dir: Path, sample_texts: AlignTexts
) -> None:
    stamp = os.stat(aligned_student_dir.resolve() / "model.onnx").st_mtime_ns
    again = run_alignment(student_dir, teacher_dir, sample_texts, "adapter", "test-sample-student")
    assert again.resolve() == aligned_student_dir.resolve()
    assert os.stat(again.resolve() / "model.onnx").st_mtime_ns == stamp
    assert ModelCard.load(again).fingerprint == ModelCard.load(aligned_student_dir).fingerprint


@pytest.mark.slow
def test_distillation_trains_exports_and_passes_parity(
    student_dir: Path, teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few LEAF steps on a small text set: lower loss, a parity-checked ONNX, a card."""
    from tandem.toolchain.distill import DistillConfig

    texts = AlignTexts(
        queries=pseudo_queries(_SMALL_PASSAGES, 60, seed=0),
        passages=_SMALL_PASSAGES,
    )
    config = DistillConfig(epochs=2, batch_size=8, max_minutes=3, checkpoint_every=5)
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    path = run_alignment(student_dir, teacher_dir, texts, "distill", "tiny", config, False)
    card = ModelCard.load(path)
    assert card.aligned_to is not None and card.aligned_to.method == "distill"
    assert card.parity_min_cosine is not None and card.parity_min_cosine >= 0.9999
    settings = card.aligned_to.settings
    assert settings["steps"] == settings["total_steps"] > 0
    assert card.aligned_to.heldout_cosine["all"] > 0.5
    assert Encoder(path).encode(["a query"], "query").shape == (1, 768)
    assert card.name == "tiny" and settings["out_name"] == "tiny"
    # Two outputs: the retrained encoder's own vector is a new encoder with a chosen weight.
    assert card.native is not None and card.native.name == "tiny-native"
    assert card.native.fused_weight is not None
    native = Encoder(path, output="native")
    assert native.encode(["a query"], "query").shape == (1, 384)
    assert native.card.fingerprint != ModelCard.load(student_dir).fingerprint


def test_schedule_follows_the_time_budget_when_it_runs_out_first() -> None:
    from tandem.toolchain.distill import lr_factor, training_progress

    assert training_progress(50, 100, minutes=1.0, max_minutes=None) == 0.5
    assert training_progress(50, 100, minutes=1.0, max_minutes=10.0) == 0.5  # steps lead
    assert training_progress(10, 100, minutes=8.0, max_minutes=10.0) == 0.8  # the clock leads
    assert lr_factor(0.025, warmup_fraction=0.05) == pytest.approx(0.5)  # warming up
    assert lr_factor(0.05, 0.05) == 1.0 and lr_factor(0.525, 0.05) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.05) == 0.0  # ends annealed, however it ends


def test_length_bucketed_batches_cover_every_row_and_cut_padding() -> None:
    from tandem.toolchain.distill import length_bucketed_batches

    rng = np.random.default_rng(3)
    lengths = np.concatenate([rng.integers(4, 20, 900), rng.integers(100, 129, 300)])
    batches = length_bucketed_batches(lengths, batch_size=32, epochs=2, seed=0)
    seen = np.bincount(np.concatenate(batches), minlength=len(lengths))
    assert set(seen.tolist()) == {2}  # every row exactly once per epoch
    assert all(len(b) <= 32 for b in batches) and len(batches) == 2 * int(np.ceil(1200 / 32))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    shuffled = [rng.permutation(1200)[i : i + 32] for i in range(0, 1200, 32)]
    padded_random = 2 * sum(len(b) * lengths[b].max() for b in shuffled)
    assert padded < 0.6 * padded_random  # queries no longer pay for a passage's padding
    again = length_bucketed_batches(lengths, batch_size=32, epochs=2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))  # resumable


_SMALL_PASSAGES = [
    "Regular aerobic exercise lowers resting blood pressure in adults with hypertension.",
    "The Great Barrier Reef has lost half of its coral cover since 1995 due to bleaching.",
    "Python dictionaries preserve insertion order since version 3.7 of the language.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter.",
    "The Apollo 11 mission landed the first humans on the Moon in July 1969.",
    "Index funds track a market benchmark and charge lower fees than active funds.",
    "Marathon runners rely on glycogen stores that are depleted after about two hours.",
    "The printing press of Johannes Gutenberg spread across Europe after 1450.",
    "Vaccines train the adaptive immune system to recognise a pathogen quickly.",
    "Rising sea temperatures intensify tropical cyclones and their rainfall.",
    "Transformers use self-attention to relate every token to every other token.",
    "Fermented foods such as kimchi contain live bacteria that may aid digestion.",
]
