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
only if the mean held-out cosine is at least ``MIN_PAIR_COSINE`` *and* each
student vector finds its own text's teacher vector among its
``SELF_RETRIEVAL_K`` nearest teacher vectors of the measured texts for at least
``MIN_SELF_RECALL`` of the texts (chance is k / n).
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
MIN_SELF_RECALL = 0.5
SELF_RETRIEVAL_K = 10
MAX_RETRIEVAL_ROWS = 2000  # bounds the (n, n) score matrix of the self-retrieval test


class PairRefused(Exception):
    """The measured pair shows no shared space (or cannot be compared at all)."""


@dataclass(frozen=True)
class PairMeasurement:
    """How closely the student reproduces the teacher on texts neither was fitted on."""

    heldout_cosine: dict[str, float]  # query, passage, all: as `align` reports them
    shuffled_cosine: float  # student vector vs another text's teacher vector: the baseline
    self_recall: float  # own teacher vector among the SELF_RETRIEVAL_K nearest
    n_texts: int

    def problems(self) -> list[str]:
        """Why the pair is not a shared space; empty when it is."""
        found = []
        cosine = self.heldout_cosine["all"]
        if cosine < MIN_PAIR_COSINE:
            found.append(f"mean cosine {cosine:.3f} < {MIN_PAIR_COSINE}")
        if self.self_recall < MIN_SELF_RECALL:
            found.append(
                f"only {self.self_recall:.0%} of student vectors find their own text's teacher "
                f"vector among the {SELF_RETRIEVAL_K} nearest (< {MIN_SELF_RECALL:.0%}; "
                f"cosine to other texts' teacher vectors is {self.shuffled_cosine:.3f})"
            )
        return found


def self_recall(
    student: npt.NDArray[np.float32], teacher: npt.NDArray[np.float32], k: int = SELF_RETRIEVAL_K
) -> float:
    """Fraction of rows whose own teacher vector ranks in the student vector's top k."""
    scores = student @ teacher.T  # (n, n)
    own = np.diag(scores)[:, None]  # (n, 1)
    rank = np.sum(scores > own, axis=1)  # texts ranked strictly above the own one
    return float(np.mean(rank < k))


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
    sample = np.sort(rng.permutation(rows)[:MAX_RETRIEVAL_ROWS])
    s = _unit(pairs.student[sample])
    t = _unit(pairs.teacher[sample])
    shuffled = float(np.mean(np.sum(s * np.roll(t, 1, axis=0), axis=1)))
    measured = PairMeasurement(report, shuffled, self_recall(s, t), len(rows))
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
            "self_recall_at_10": measured.self_recall,
            "min_cosine": MIN_PAIR_COSINE,
            "min_self_recall": MIN_SELF_RECALL,
            "forced": forced,
            "n_queries": len(texts.queries),
            "n_passages": len(texts.passages),
            "texts": texts.source,
        },
    )
    paired = card.model_copy(update={"name": out_name, "aligned_to": alignment})
    paired.save(out_dir)
    return paired
