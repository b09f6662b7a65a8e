"""Load-test fixtures: a 20-document bundle and a real server, once per module.

The server is started with tests/support/server.py (the same helper the
server tests use).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest
from tandem.indexer.build import build_bundle
from tandem.models.encoder import Encoder

from tandem.data.corpus import read_corpus
from tests.support.server import API_KEY, ServerProcess, running_server

REPO = Path(__file__).resolve().parents[2]
N_DOCS = 20
VARIANTS = ["f32-768", "bin-768"]


@pytest.fixture(scope="module")
def load_bundle(tmp_path_factory: pytest.TempPathFactory, teacher: Encoder) -> Path:
    """Teacher vectors of the sample corpus come from the embedding cache: no teacher time."""
    root = tmp_path_factory.mktemp("load-bundle")
    docs = list(islice(read_corpus(REPO / "samples" / "corpus.jsonl"), N_DOCS))
    build_bundle(docs, root, teacher, VARIANTS)
    return root


@pytest.fixture(scope="module")
def load_server(
    tmp_path_factory: pytest.TempPathFactory, load_bundle: Path, aligned_student_dir: Path
) -> Iterator[ServerProcess]:
    """One worker on 127.0.0.1 behind an API key, as the locustfile's --api-key expects."""
    tmp = tmp_path_factory.mktemp("load-server")
    args = ["--bundle", str(load_bundle), "--student", str(aligned_student_dir)]
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}, name="load-server") as proc:
        yield proc
