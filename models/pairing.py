"""Whether a query encoder may be searched against a teacher's bundle.

A student's vectors mean something only in the space of the teacher it was
aligned to. Pairing it with another teacher's bundle returns confident
nonsense, so it is refused unless an expert overrides it.
"""

from __future__ import annotations

from tandem.models.card import ModelCard

from tandem.errors import ConfigError


class PairingError(ConfigError):
    """The query encoder does not speak the bundle teacher's space."""


def check_pair(query_card: ModelCard, teacher_name: str, teacher_fingerprint: str) -> None:
    """Accept the teacher itself, or a student aligned to exactly this teacher."""
    if query_card.fingerprint == teacher_fingerprint:
        return
    aligned = query_card.aligned_to
    if aligned is None:
        raise PairingError(
            f"{query_card.name} is not aligned to the bundle's teacher {teacher_name} "
            f"(fingerprint {teacher_fingerprint[:12]}): align it first with "
            f"`tandem models align --teacher {teacher_name} --student {query_card.name} ...`, "
            "or pass --allow-unaligned if you know what you are doing"
        )
    if aligned.teacher_fingerprint == teacher_fingerprint:
        return
    if aligned.method == "upstream" and aligned.teacher_name == teacher_name:
        return
    raise PairingError(
        f"{query_card.name} is aligned to {aligned.teacher_name} "
        f"(fingerprint {aligned.teacher_fingerprint[:12]}), but the bundle was built by "
        f"{teacher_name} (fingerprint {teacher_fingerprint[:12]}): use a student aligned to "
        "this teacher, or pass --allow-unaligned to override"
    )
