"""Serving int8 for real: one query per ONNX run, so batch mates never move a vector."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder

from tests.support.server import QUERIES, ServerProcess, running_server

pytestmark = pytest.mark.slow

LONG = "Rising ocean temperatures bleach coral reefs faster than they recover. " * 8


@pytest.fixture(scope="module")
def int8_server(
    tmp_path_factory: pytest.TempPathFactory, bundle_root: Path, query_encoder_dir: Path
) -> Iterator[ServerProcess]:
    assert ModelCard.load(query_encoder_dir).int8 is not None  # the alignment job quantizes
    args = ["--bundle", str(bundle_root), "--student", str(query_encoder_dir)]
    args += ["--precision", "int8", "--max-wait-ms", "20"]  # wide batches under the burst below
    with running_server(tmp_path_factory.mktemp("int8"), args) as proc:
        yield proc


def embed(server: ServerProcess, texts: list[str]) -> np.ndarray:
    body = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts}, timeout=30).json()
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def test_served_int8_vectors_equal_the_int8_encoder_alone(
    int8_server: ServerProcess, query_encoder_dir: Path
) -> None:
    encoder = Encoder(query_encoder_dir, precision="int8", device="cpu")
    texts = [*QUERIES[:4], LONG]
    alone = np.vstack([encoder.encode([t], "query") for t in texts])
    np.testing.assert_allclose(embed(int8_server, texts), alone, rtol=0, atol=1e-6)
    info = httpx.get(f"{int8_server.url}/info", timeout=10).json()
    assert "int8" in str(info)


def test_concurrent_batch_mates_do_not_move_a_query(int8_server: ServerProcess) -> None:
    texts = [*QUERIES, LONG] * 3
    alone = {t: embed(int8_server, [t])[0] for t in set(texts)}
    with ThreadPoolExecutor(len(texts)) as pool:
        together = list(pool.map(lambda t: embed(int8_server, [t])[0], texts))
    for text, got in zip(texts, together, strict=True):
        np.testing.assert_allclose(got, alone[text], rtol=0, atol=1e-6)
