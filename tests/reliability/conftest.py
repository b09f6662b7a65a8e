"""Reliability fixtures: a small bundle and real ``tandem serve`` processes on 127.0.0.1.

Servers are started with tests/server/serverkit.py (the helper the server and
load tests use), hence the path entry: test folders are not packages. The
bundle holds the first 40 sample documents (teacher vectors come from the
shared embedding cache, so reruns cost no teacher time).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from serverkit import sample_docs  # noqa: E402
from tandem.indexer.build import build_bundle  # noqa: E402
from tandem.models.encoder import Encoder  # noqa: E402

VARIANTS = ["f32-768", "f32-256", "bin-768"]


@pytest.fixture(scope="session")
def reliability_bundle(tmp_path_factory: pytest.TempPathFactory, teacher: Encoder) -> Path:
    """A bundle root with one published version (v0001)."""
    root = tmp_path_factory.mktemp("reliability") / "bundle"
    build_bundle(sample_docs(), root, teacher, VARIANTS)
    return root


@pytest.fixture(scope="session")
def student_arg(aligned_student_dir: Path) -> str:
    """The query encoder every server here runs: the student aligned to the bundle's teacher."""
    return str(aligned_student_dir)
