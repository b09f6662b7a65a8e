"""Server fixtures: one small bundle per session, and real server processes.

The bundle holds the first 40 sample documents (teacher vectors come from the
shared embedding cache, so reruns cost no teacher time) with every variant
kind the server must handle. Queries are embedded by the student aligned to
the teacher (``aligned_student_dir``), as in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tandem.indexer.build import build_bundle
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder

from tests.support.server import API_KEY, VARIANTS, ServerProcess, running_server, sample_docs


@pytest.fixture(scope="session")
def query_encoder_dir(aligned_student_dir: Path) -> Path:
    """What the server embeds queries with: the student aligned to the bundle's teacher."""
    return Path(aligned_student_dir)


@pytest.fixture(scope="session")
def query_encoder(query_encoder_dir: Path) -> Encoder:
    """The student at the precision the server serves by default (``--precision auto``).

    That is fp32 unless this machine's cache holds an int8 verdict from
    ``tandem models guard`` for the student (the card is shared with the demo).
    """
    card = ModelCard.load(query_encoder_dir)
    return Encoder(query_encoder_dir, precision=card.serving_precision, device="cpu")


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory: pytest.TempPathFactory, teacher: Encoder) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    build_bundle(sample_docs(), root, teacher, VARIANTS)
    return root


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, bundle_root: Path, query_encoder_dir: Path
) -> Iterator[ServerProcess]:
    """One worker with an API key over the session bundle, shared by a test module."""
    tmp = tmp_path_factory.mktemp("server")
    args = ["--bundle", str(bundle_root), "--student", str(query_encoder_dir)]
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}) as proc:
        yield proc


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
        yield c
