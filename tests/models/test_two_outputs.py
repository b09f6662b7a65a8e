"""One forward pass, two vectors: the aligned student's graph emits its native and teacher-space
vectors, and both match their references."""

from __future__ import annotations

import numpy as np
from tandem.models.encoder import NATIVE_OUTPUT, OUTPUT_NAME, Encoder
from tandem.toolchain.align import Adapter
from tandem.toolchain.export import PARITY_TEXTS

MIN_COSINE = 0.9999


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_graph_declares_both_outputs(aligned_student: Encoder) -> None:
    names = [o.name for o in aligned_student.session.get_outputs()]
    assert names == [OUTPUT_NAME, NATIVE_OUTPUT]


def test_both_outputs_match_the_student_and_the_adapter(
    aligned_student: Encoder, student: Encoder
) -> None:
    saved = np.load(aligned_student.folder / "adapter.npz")
    adapter = Adapter(saved["weight"], saved["bias"], lam=0.0)
    for start in range(0, len(PARITY_TEXTS), 8):
        texts = PARITY_TEXTS[start : start + 8]
        batch = aligned_student.tokenize(texts, "query")
        main, native = aligned_student.forward_both(batch)
        own = student.forward(student.tokenize(texts, "query"))  # the student's own graph
        assert native.shape == (len(texts), student.dim)
        assert main.shape == (len(texts), 768)
        assert _cosines(native, own).min() >= MIN_COSINE
        assert _cosines(main, adapter.apply(own)).min() >= MIN_COSINE
        # the one-output path reads the same teacher-space vector
        np.testing.assert_allclose(aligned_student.forward(batch), main, atol=1e-6)


def test_native_encoder_is_the_raw_student(aligned_student: Encoder, student: Encoder) -> None:
    native = Encoder(aligned_student.folder, device="cpu", output="native")
    assert native.card.fingerprint == student.card.fingerprint
    assert native.dim == student.dim and native.name == student.name
    texts = ["sleep and memory", "how do vaccines work"]
    np.testing.assert_allclose(
        native.encode(texts, "query"), student.encode(texts, "query"), atol=1e-5
    )


def test_card_carries_the_label_free_weight(aligned_student: Encoder) -> None:
    native = aligned_student.full_card.native
    assert native is not None and native.fused_weight is not None
    assert 0.0 <= native.fused_weight <= 1.0
    assert set(native.fused_agreement) == {f"{0.1 * i:.1f}" for i in range(11)}
    best = max(native.fused_agreement.values())
    assert native.fused_agreement[f"{native.fused_weight:.1f}"] == best


def test_one_output_model_returns_its_vector_twice(student: Encoder) -> None:
    main, native = student.forward_both(student.tokenize(["a query"], "query"))
    np.testing.assert_array_equal(main, native)
