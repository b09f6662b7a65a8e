"""Declare a pair aligned by its publisher, after measuring that it shares the teacher's space.

Some families are published to share one embedding space across sizes (LEAF's
mdbr-leaf-ir with arctic-embed-m-v1.5). Nothing is trained here: the student
and the teacher embed the same query-like and passage texts, none of which
either was fitted on by tandem, so every text is held out. The measurement is
the one ``align`` reports (``heldout_report``), plus a test that the vectors
agree text by text and not only on average.

Why two criteria: raw cosine alone cannot tell a shared space from two
anisotropic spaces that happen to point the same way (randomly initialized
encoders give every text nearly the same vector, and a student fitted only to
the teacher's mean direction scores a high cosine). So a pair is declared
only if the mean held-out cosine is at least ``MIN_PAIR_COSINE`` *and* a
student vector is closer to its own text's teacher vector than to another
text's teacher vector in at least ``MIN_OWN_TEXT_RATE`` of (text, other text)
comparisons. Chance is 0.5 whatever the number of texts; published pairs and
tandem's adapter-aligned students sit near 1.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tandem.models.card import Alignment, ModelCard
from tandem.models.encoder import Encoder
from tandem.toolchain.align import AlignTexts, heldout_report, paired_embeddings

from tandem.home import stable_hash

logger = logging.getLogger(__name__)

PAIR_FORMAT = 1
MIN_PAIR_COSINE = 0.5
MIN_OWN_TEXT_RATE = 0.9
MAX_COMPARED_ROWS = 2000  # bounds the (n, n) score matrix of the text-by-text test


class PairRefused(Exception):
    """The measured pair shows no shared space (or cannot be compared at all)."""


@dataclass(frozen=True)
class PairMeasurement:
    """How closely the student reproduces the teacher on texts neither was fitted on."""

    heldout_cosine: dict[str, float]  # query, passage, all: as `align` reports them
    shuffled_cosine: float  # student vector vs another text's teacher vector: the baseline
    own_text_rate: float  # how often the own text's teacher vector beats another text's
    n_texts: int

    def problems(self) -> list[str]:
        """Why the pair is not a shared space; empty when it is."""
        found = []
        cosine = self.heldout_cosine["all"]
        if cosine < MIN_PAIR_COSINE:
            found.append(f"mean cosine {cosine:.3f} < {MIN_PAIR_COSINE}")
        if self.own_text_rate < MIN_OWN_TEXT_RATE:
            found.append(
                f"a student vector is closer to its own text's teacher vector than to another "
                f"text's in only {self.own_text_rate:.1%} of comparisons (< "
                f"{MIN_OWN_TEXT_RATE:.0%}; chance is 50%; mean cosine to other texts' teacher "
                f"vectors {self.shuffled_cosine:.3f})"
            )
        return found


def own_text_rate(student: npt.NDArray[np.float32], teacher: npt.NDArray[np.float32]) -> float:
    """Fraction of (i, j != i) where student i scores teacher i above teacher j (an AUC)."""
    n = len(student)
    if n < 2:
        return float("nan")
    scores = student @ teacher.T  # (n, n)
    own = np.diag(scores)[:, None]  # (n, 1)
    below = np.sum(scores < own, axis=1)  # other texts' teacher vectors scored lower
    return float(np.mean(below / (n - 1)))


def measure_pair(student: Encoder, teacher: Encoder, texts: AlignTexts) -> PairMeasurement:
    """Embed the texts with both (queries as queries, passages as documents) and compare."""
    if student.dim != teacher.dim:
        raise PairRefused(
            f"{student.name} emits {student.dim}-d vectors and {teacher.name} {teacher.dim}-d: "
            "they cannot share a space; align the student with `tandem models align` instead"
        )
    pairs = paired_embeddings(student, teacher, texts)
    rows = np.arange(len(pairs.kinds), dtype=np.int64)  # nothing fitted here: all held out
    report = heldout_report(pairs.student, pairs.teacher, pairs.kinds, rows)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.permutation(rows)[:MAX_COMPARED_ROWS])
    s = _unit(pairs.student[sample])
    t = _unit(pairs.teacher[sample])
    shuffled = float(np.mean(np.sum(s * np.roll(t, 1, axis=0), axis=1)))
    measured = PairMeasurement(report, shuffled, own_text_rate(s, t), len(rows))
    logger.info("%s -> %s: %s", student.name, teacher.name, measured)
    return measured


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # (n, 1)
    return np.asarray(x / norms, dtype=np.float32)


def pair_key(student: ModelCard, teacher: ModelCard, texts: AlignTexts) -> str:
    return stable_hash(
        PAIR_FORMAT, "upstream", student.fingerprint, teacher.fingerprint, texts.key()
    )


def write_paired_artifact(
    student: Encoder,
    teacher: Encoder,
    measured: PairMeasurement,
    texts: AlignTexts,
    out_dir: Path,
    out_name: str,
    forced: bool,
) -> ModelCard:
    """The student's own files and a card that records the measured upstream pair.

    The vectors do not change, so neither does the fingerprint: the card only
    gains ``aligned_to``, pinned to the measured teacher's fingerprint.
    """
    card = student.card
    for name in {card.onnx_file, card.tokenizer_file} | ({card.int8.file} if card.int8 else set()):
        shutil.copyfile(student.folder / name, out_dir / name)
    alignment = Alignment(
        teacher_name=teacher.name,
        teacher_fingerprint=teacher.card.fingerprint,
        method="upstream",
        n_texts=measured.n_texts,
        heldout_cosine=measured.heldout_cosine,
        settings={
            "out_name": out_name,
            "student": student.name,
            "student_fingerprint": card.fingerprint,
            "shuffled_cosine": measured.shuffled_cosine,
            "own_text_rate": measured.own_text_rate,
            "min_cosine": MIN_PAIR_COSINE,
            "min_own_text_rate": MIN_OWN_TEXT_RATE,
            "forced": forced,
            "n_queries": len(texts.queries),
            "n_passages": len(texts.passages),
            "texts": texts.source,
        },
    )
    paired = card.model_copy(update={"name": out_name, "aligned_to": alignment})
    paired.save(out_dir)
    return paired
