"""Indexer fixtures: a 40-document corpus and one bundle built from it by the real teacher.

Teacher vectors come from the shared embedding cache, so only the first run
on a machine pays for the (short) teacher pass. Tests that change a bundle
work on a copy of the session root.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from tandem.bundle.format import Bundle, open_bundle
from tandem.indexer.build import EmbedSettings, build_bundle
from tandem.models.embedding_cache import EmbeddingCache, encode_cached
from tandem.models.encoder import Encoder

from tandem.data.corpus import read_corpus
from tests.support.index import ALL_VARIANTS, QUERIES, corpus_rows, write_jsonl


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", corpus_rows())


@pytest.fixture(scope="session")
def session_root(
    tmp_path_factory: pytest.TempPathFactory, corpus_file: Path, teacher: Encoder
) -> Path:
    root = tmp_path_factory.mktemp("bundles") / "small"
    build_bundle(
        read_corpus(corpus_file),
        root,
        teacher,
        ALL_VARIANTS,
        settings=EmbedSettings(checkpoint_every=16),
    )
    return root


@pytest.fixture(scope="session")
def bundle(session_root: Path) -> Iterator[Bundle]:
    with open_bundle(session_root) as opened:
        yield opened


@pytest.fixture()
def root_copy(session_root: Path, tmp_path: Path) -> Path:
    """A private copy of the session root that a test may update."""
    target = tmp_path / "root"
    shutil.copytree(session_root, target, symlinks=True)
    return target


@pytest.fixture(scope="session")
def query_vectors(teacher: Encoder) -> npt.NDArray[np.float32]:
    return encode_cached(teacher, QUERIES, "query", EmbeddingCache.for_encoder(teacher))
