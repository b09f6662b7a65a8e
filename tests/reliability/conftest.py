"""Reliability fixtures: a small bundle and real ``tandem serve`` processes on 127.0.0.1.

Servers are started with tests/support/server.py (the helper the server and
load tests use). The
bundle holds the first 40 sample documents (teacher vectors come from the
shared embedding cache, so reruns cost no teacher time).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tandem.indexer.build import build_bundle
from tandem.models.encoder import Encoder

from tests.support.server import sample_docs

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
