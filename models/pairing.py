"""Whether a query encoder may be searched against a teacher's bundle.

A student's vectors mean something only in the space of the teacher it was
aligned to. Pairing it with another teacher's bundle returns confident
nonsense, so it is refused unless an expert overrides it.

A pair aligned by its publisher (``upstream``) and declared by a built-in card
names its teacher but cannot know the teacher's fingerprint before both are
exported. Such a declaration is checked by name and, when the named teacher
resolves on this machine, by that teacher's fingerprint: a bundle whose
teacher carries the name but not the fingerprint (other weights, another max
length or prompt) is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tandem.models.card import ModelCard

from tandem.errors import ConfigError

logger = logging.getLogger(__name__)

TeacherResolver = Callable[[str], str | None]


class PairingError(ConfigError):
    """The query encoder does not speak the bundle teacher's space."""


def local_teacher_fingerprint(name: str) -> str | None:
    """The fingerprint of ``name`` as exported on this machine; None if it is not here.

    Never exports and never downloads: a serving image without the teacher
    gets None, and the declared pair is then checked by name alone.
    """
    from tandem.models.artifacts import ArtifactError, find_exported
    from tandem.models.sources import ModelSourceError

    try:
        folder = find_exported(name)
    except (ArtifactError, ModelSourceError, OSError):
        return None
    return None if folder is None else ModelCard.load(folder).fingerprint


def check_pair(
    query_card: ModelCard,
    teacher_name: str,
    teacher_fingerprint: str,
    resolve_teacher: TeacherResolver | None = local_teacher_fingerprint,
) -> None:
    """Accept the teacher itself, or a student aligned to exactly this teacher.

    ``resolve_teacher`` maps a declared teacher's name to its fingerprint here
    (None when it cannot be resolved); it is consulted only for declared,
    unpinned upstream pairs.
    """
    if query_card.fingerprint == teacher_fingerprint:
        return
    aligned = query_card.aligned_to
    if aligned is None:
        raise PairingError(
            f"{query_card.name} is not aligned to the bundle's teacher {teacher_name} "
            f"(fingerprint {teacher_fingerprint[:12]}): align it first with "
            f"`tandem models align --teacher {teacher_name} --student {query_card.name} ...` "
            f"(or declare a pair aligned by its publisher with `tandem models pair`), "
            "or pass --allow-unaligned if you know what you are doing"
        )
    if aligned.teacher_fingerprint == teacher_fingerprint:
        return
    if aligned.method == "upstream" and not aligned.teacher_fingerprint:
        _check_declared(
            query_card.name,
            aligned.teacher_name,
            teacher_name,
            teacher_fingerprint,
            resolve_teacher,
        )
        return
    raise PairingError(
        f"{query_card.name} is aligned to {aligned.teacher_name} "
        f"(fingerprint {aligned.teacher_fingerprint[:12]}), but the bundle was built by "
        f"{teacher_name} (fingerprint {teacher_fingerprint[:12]}): use a student aligned to "
        "this teacher, or pass --allow-unaligned to override"
    )


def _check_declared(
    student: str,
    declared: str,
    teacher_name: str,
    teacher_fingerprint: str,
    resolve_teacher: TeacherResolver | None,
) -> None:
    """A publisher's declared pair: the bundle's teacher must be the named model, as resolved."""
    if declared != teacher_name:
        raise PairingError(
            f"{student} was aligned by its publisher to {declared}, but the bundle was "
            f"built by {teacher_name} (fingerprint {teacher_fingerprint[:12]}): index with "
            f"{declared}, or pass --allow-unaligned to override"
        )
    resolved = resolve_teacher(declared) if resolve_teacher is not None else None
    if resolved is None:
        logger.info(
            "%s: declared upstream pair with %s checked by name (the teacher is not exported here)",
            student,
            declared,
        )
        return
    if resolved != teacher_fingerprint:
        raise PairingError(
            f"{student} was aligned by its publisher to {declared}, which resolves here "
            f"to fingerprint {resolved[:12]}, but the bundle's teacher of that name has "
            f"fingerprint {teacher_fingerprint[:12]} (other weights, max length or prompts): "
            f"rebuild the bundle with {declared}, or pass --allow-unaligned to override"
        )
