"""Session fixtures: the real ONNX teacher and student, exported once and cached.

Exports live in $TANDEM_HOME (default ~/.cache/tandem), keyed by the hash of
their inputs, so only the first run on a machine pays for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tandem.models.encoder import Encoder
from tandem.toolchain.export import export_artifact

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    return export_artifact("all-mpnet-base-v2")


@pytest.fixture(scope="session")
def student_dir() -> Path:
    return export_artifact("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def teacher(teacher_dir: Path) -> Encoder:
    return Encoder(teacher_dir, device="cpu")


@pytest.fixture(scope="session")
def student(student_dir: Path) -> Encoder:
    return Encoder(student_dir, device="cpu")


SAMPLE_PSEUDO_QUERIES = 800  # the same texts as `tandem demo`, so the caches are shared


@pytest.fixture(scope="session")
def sample_texts():  # type: ignore[no-untyped-def]
    from tandem.toolchain.alignment_job import gather_texts

    return gather_texts(SAMPLES / "corpus.jsonl", SAMPLE_PSEUDO_QUERIES)


@pytest.fixture(scope="session")
def aligned_student_dir(student_dir: Path, teacher_dir: Path, sample_texts) -> Path:  # type: ignore[no-untyped-def]
    """The student aligned to the teacher by a ridge adapter on the sample corpus (cached)."""
    from tandem.toolchain.alignment_job import run_alignment

    # The keyed store folder, not the name: the name is a link other checkouts may repoint.
    return run_alignment(
        student_dir, teacher_dir, sample_texts, "adapter", "test-sample-student"
    ).resolve()


@pytest.fixture(scope="session")
def aligned_student(aligned_student_dir: Path) -> Encoder:
    return Encoder(aligned_student_dir, device="cpu")
