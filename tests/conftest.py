"""Session fixtures: the real ONNX teacher and student, exported once and cached.

Exports live in $TANDEM_HOME (default ~/.cache/tandem), keyed by the hash of
their inputs, so only the first run on a machine pays for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.artifacts import resolve_artifact
from models.encoder import Encoder

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    return resolve_artifact("all-mpnet-base-v2")


@pytest.fixture(scope="session")
def student_dir() -> Path:
    return resolve_artifact("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def teacher(teacher_dir: Path) -> Encoder:
    return Encoder(teacher_dir, device="cpu")


@pytest.fixture(scope="session")
def student(student_dir: Path) -> Encoder:
    return Encoder(student_dir, device="cpu")
