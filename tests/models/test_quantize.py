"""The int8 guard accepts faithful variants and refuses drifting ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder
from tandem.toolchain.quantize import (
    INT8_FILE,
    QuantConfig,
    QuantizationRefused,
    quantize_best,
    quantize_int8,
)


@pytest.fixture
def student_copy(student_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "student"
    shutil.copytree(student_dir, folder)
    (folder / INT8_FILE).unlink(missing_ok=True)
    card = ModelCard.load(folder)
    card.int8 = None
    card.save(folder)
    return folder


@pytest.mark.slow
def test_naive_int8_is_refused_and_nothing_written(student_copy: Path) -> None:
    with pytest.raises(QuantizationRefused, match="drifts"):
        quantize_int8(student_copy, QuantConfig.naive(), min_mean_cosine=0.99, min_cosine=0.95)
    assert not (student_copy / INT8_FILE).exists()
    assert ModelCard.load(student_copy).int8 is None


@pytest.mark.slow
def test_weight_only_int8_is_accepted_and_close_to_fp32(student_copy: Path) -> None:
    card, attempts = quantize_best(student_copy)
    assert attempts[-1].startswith("accepted")
    assert card.int8 is not None and card.int8.cosine_mean >= 0.99
    assert (student_copy / INT8_FILE).exists()
    fp32 = Encoder(student_copy, precision="fp32")
    int8 = Encoder(student_copy, precision="int8")
    texts = ["ketogenic diet and epilepsy", "solar panel efficiency records"]
    cosines = np.sum(fp32.encode(texts, "query") * int8.encode(texts, "query"), axis=1)
    assert cosines.min() >= 0.95
    assert card.fingerprint == ModelCard.load(student_copy).fingerprint  # int8 is a variant
