"""Which retrieval modes an evaluation runs, decided from the model cards alone.

Modes (DESIGN.md, "The idea"):
- teacher-symmetric: teacher documents, teacher queries (the quality ceiling);
- student-symmetric: the raw student for both (what the small model does alone);
- asymmetric: teacher documents, queries from a student aligned to this teacher
  (what tandem serves);
- fused: an aligned student's one pass gives two query vectors, searching the
  teacher's documents and the student's own view of them; scores are fused as
  ``w·asym + (1−w)·student`` (``tandem.bundle.fused``);
- asymmetric-unaligned: teacher documents, raw-student queries; only defined
  when the dimensions agree, and then it shows why alignment is needed.
A mode that cannot run carries the reason instead of crashing the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tandem.models.encoder import Encoder
from tandem.models.pairing import PairingError, check_pair

Mode = Literal[
    "teacher-symmetric", "student-symmetric", "asymmetric", "fused", "asymmetric-unaligned"
]
MODES: tuple[Mode, ...] = (
    "teacher-symmetric",
    "student-symmetric",
    "asymmetric",
    "fused",
    "asymmetric-unaligned",
)


@dataclass(frozen=True)
class ModePlan:
    """One mode to evaluate; ``reason`` is set when it does not apply."""

    mode: Mode
    query_encoder: Encoder
    doc_encoder: Encoder
    reason: str | None = None


def plan_modes(teacher: Encoder, students: Sequence[Encoder]) -> list[ModePlan]:
    """Which modes each student takes part in, decided from the model cards alone.

    A student aligned to some teacher is evaluated as the query side of
    ``asymmetric`` (one aligned by its publisher, such as mdbr-leaf-ir, also
    alone, as ``student-symmetric``, to compare with its published numbers);
    a raw student gives ``student-symmetric`` and, where its dimension
    matches, ``asymmetric-unaligned``.
    """
    plans = [ModePlan("teacher-symmetric", teacher, teacher)]
    for student in students:
        aligned = student.card.aligned_to
        if aligned is not None:
            reason = _asymmetric_reason(student, teacher)
            plans.append(ModePlan("asymmetric", student, teacher, reason))
            if aligned.method == "upstream":  # a model in its own right, with published numbers
                plans.append(ModePlan("student-symmetric", student, student))
            if reason is None and student.full_card.native is None:
                reason = (
                    f"{student.name} has no native output (aligned by an older tandem): "
                    "re-run `tandem models align` to get the two-output graph"
                )
            plans.append(ModePlan("fused", student, teacher, reason))
            continue
        plans.append(ModePlan("student-symmetric", student, student))
        reason = None
        if student.dim != teacher.dim:
            reason = (
                f"{student.name} emits {student.dim}-d vectors, {teacher.name} {teacher.dim}-d: "
                "an unaligned student cannot search the teacher's index"
            )
        plans.append(ModePlan("asymmetric-unaligned", student, teacher, reason))
    return plans


def _asymmetric_reason(student: Encoder, teacher: Encoder) -> str | None:
    try:
        check_pair(student.card, teacher.name, teacher.card.fingerprint)
    except PairingError as exc:
        return str(exc).split(": use", 1)[0]
    if student.dim != teacher.dim:
        return f"{student.name} is aligned but emits {student.dim}-d vectors, not {teacher.dim}-d"
    return None
