"""The ONNX encoders reproduce their torch models and batch correctly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tandem.models.artifacts import ArtifactNotExported, resolve_artifact
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder, plan_batches
from tandem.models.sources import resolve_source
from tandem.toolchain.export import PARITY_MIN_COSINE, PARITY_TEXTS, export_artifact

TEXTS = [
    "vitamin d deficiency",
    "How do mRNA vaccines train the immune system?",
    "Zürich café prices",
    "",
    "A much longer sentence about the mechanisms of insulin resistance in skeletal muscle. " * 3,
]


@pytest.mark.parametrize("fixture", ["teacher", "student"])
def test_export_passed_parity_check(fixture: str, request: pytest.FixtureRequest) -> None:
    encoder: Encoder = request.getfixturevalue(fixture)
    assert len(PARITY_TEXTS) >= 32
    assert encoder.card.parity_min_cosine is not None
    assert encoder.card.parity_min_cosine >= PARITY_MIN_COSINE


@pytest.mark.slow
def test_student_matches_sentence_transformers(student: Encoder) -> None:
    """An independent reference: the sentence-transformers pipeline on the same texts."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(resolve_source("all-MiniLM-L6-v2").folder), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    got = student.encode(TEXTS, kind="query")
    cosines = np.sum(expected * got, axis=1)
    assert cosines.min() >= PARITY_MIN_COSINE


def test_outputs_are_unit_norm_with_card_dims(teacher: Encoder, student: Encoder) -> None:
    assert teacher.dim == 768 and student.dim == 384
    for encoder in (teacher, student):
        vectors = encoder.encode(TEXTS[:3], kind="query")
        assert vectors.shape == (3, encoder.dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_batched_encode_equals_one_by_one_in_input_order(student: Encoder) -> None:
    batched = student.encode(TEXTS, kind="document", token_budget=64, max_batch=2)
    single = np.vstack([student.encode([t], kind="document") for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_truncation_is_counted(student: Encoder) -> None:
    batch = student.tokenize(["word " * 1000, "short"], kind="document")
    assert batch.n_truncated == 1
    assert batch.input_ids.shape[1] == student.card.max_length


def test_plan_batches_respects_token_budget() -> None:
    lengths = [5, 100, 7, 50, 3, 200, 9, 12]
    batches = plan_batches(lengths, token_budget=210, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        if len(batch) > 1:
            assert max(lengths[i] for i in batch) * len(batch) <= 210


def test_query_prefix_changes_query_vectors_only(student_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "prefixed"
    shutil.copytree(student_dir, folder)
    card = ModelCard.load(folder)
    card.query_prefix = "query: "
    card.save(folder)
    plain, prefixed = Encoder(student_dir), Encoder(folder)
    text = ["heart disease risk factors"]
    assert not np.allclose(plain.encode(text, "query"), prefixed.encode(text, "query"))
    np.testing.assert_allclose(
        plain.encode(text, "document"), prefixed.encode(text, "document"), atol=1e-6
    )


def test_fingerprint_is_stable_and_sensitive(student_dir: Path) -> None:
    card = ModelCard.load(student_dir)
    again = ModelCard.load(student_dir)
    assert card.fingerprint == again.fingerprint
    assert len(card.fingerprint) == 64
    changed = card.model_copy(update={"query_prefix": "query: "})
    assert changed.fingerprint != card.fingerprint
    assert card.model_copy(update={"max_length": 128}).fingerprint != card.fingerprint
    assert card.model_copy(update={"created_at": "2000-01-01"}).fingerprint == card.fingerprint


def test_second_resolve_reuses_the_cached_export(student_dir: Path) -> None:
    before = os.stat(student_dir / "model.onnx").st_mtime_ns
    again = resolve_artifact("all-MiniLM-L6-v2")
    assert again == student_dir
    assert os.stat(again / "model.onnx").st_mtime_ns == before


@pytest.mark.slow
def test_export_into_fresh_home_then_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold cache exports once; the second resolve finds it without exporting again."""
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    with pytest.raises(ArtifactNotExported, match="run `tandem models export all-MiniLM-L6-v2`"):
        resolve_artifact("all-MiniLM-L6-v2")  # the runtime resolver never exports
    first = export_artifact("all-MiniLM-L6-v2")
    assert first.is_relative_to(tmp_path)
    stamp = os.stat(first / "model.onnx").st_mtime_ns
    second = resolve_artifact("all-MiniLM-L6-v2")
    assert second == first and os.stat(second / "model.onnx").st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "onnx").iterdir() if p.name.endswith(".tmp")]
