"""Helpers shared by evaluation tests."""

from __future__ import annotations

from pathlib import Path

from tandem.models.card import Alignment, ModelCard
from tandem.models.encoder import Encoder


def aligned_copy(source: Path, target: Path, teacher: Encoder, name: str) -> Path:
    """An artifact whose card says it is aligned to ``teacher`` (weights shared by symlink)."""
    target.mkdir(parents=True)
    card = ModelCard.load(source)
    for file in (card.onnx_file, card.tokenizer_file):
        (target / file).symlink_to(source / file)
    card = card.model_copy(
        update={
            "name": name,
            "int8": None,
            "aligned_to": Alignment(
                teacher_name=teacher.name,
                teacher_fingerprint=teacher.card.fingerprint,
                method="adapter",
                n_texts=0,
            ),
        }
    )
    card.save(target)
    return target
