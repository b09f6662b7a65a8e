"""Helpers for server tests: constants, sample documents, and real server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import httpx
import numpy as np
from tandem.bundle.format import Bundle
from tandem.bundle.variants import query_codes, truncate_normalize

from tandem.data.corpus import Doc, read_corpus

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
N_DOCS = 40
VARIANTS = ["f32-768", "f32-256", "int8-768", "bin-768", "bin-768-hnsw", "f32-256-hnsw"]
API_KEY = "test-key-0123456789"
ATOL = 2e-4  # float32 sums in FAISS vs numpy, and f16 stored vectors
QUERIES = [
    "who noticed that mould could kill germs",
    "last natural case of a disease wiped out by vaccination",
    "how many hours should grown-ups rest each night",
    "why is the sea level rising",
    "greenhouse gases and global temperature",
]


def sample_docs(n: int = N_DOCS) -> list[Doc]:
    return list(islice(read_corpus(SAMPLES / "corpus.jsonl"), n))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(*args: str) -> list[str]:
    """``tandem serve ARGS`` in a fresh interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-c", "from tandem.cli import app; app()", "serve", *args]


class ServerProcess:
    """A real ``tandem serve`` on 127.0.0.1, started and stopped by a test."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.args = [*args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                serve_command(*self.args), stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(
    tmp_path: Path, args: list[str], env: dict[str, str] | None = None, name: str = "server"
) -> Iterator[ServerProcess]:
    server = ServerProcess(args, tmp_path / f"{name}.log", env).start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ reference


def first_pass_reference(bundle: Bundle, name: str, query: np.ndarray) -> np.ndarray:
    """Brute-force first-pass scores of every document for one variant (n_docs,).

    float kinds: truncated, re-normalized inner product; int8: inner product
    with the decoded codes read back from the index; binary: 1 - 2 * hamming / dim
    over sign bits, all in numpy.
    """
    spec = bundle.spec(name)
    query = query.reshape(1, -1).astype(np.float32)
    if spec.is_binary:
        docs = query_codes(spec, np.asarray(bundle.vectors, dtype=np.float32))  # (n, dim/8)
        codes = query_codes(spec, query)  # (1, dim/8)
        hamming = np.unpackbits(docs ^ codes, axis=1).sum(axis=1)
        return (1.0 - 2.0 * hamming / spec.dim).astype(np.float32)
    tq = truncate_normalize(query, spec.dim)[0]
    if spec.kind == "int8":
        index = bundle.index(name)
        decoded = index.reconstruct_n(0, index.ntotal)  # (n, dim) dequantized codes
        return (decoded @ tq).astype(np.float32)
    return (truncate_normalize(np.asarray(bundle.vectors), spec.dim) @ tq).astype(np.float32)


def exact_reference(bundle: Bundle, query: np.ndarray) -> np.ndarray:
    """Full-dimension scores with the stored vectors: what rescoring computes (n_docs,)."""
    return (np.asarray(bundle.vectors, dtype=np.float32) @ query.astype(np.float32)).astype(
        np.float32
    )


def assert_top_k(ids: np.ndarray, scores: np.ndarray, reference: np.ndarray, k: int) -> None:
    """Tie-tolerant: the score profile is the reference's top k and every id has its score."""
    expected = np.sort(reference)[::-1][: min(k, reference.size)]
    assert len(ids) == expected.size
    assert len(set(ids.tolist())) == len(ids), "duplicate ids"
    np.testing.assert_allclose(scores, expected, atol=ATOL)
    np.testing.assert_allclose(reference[ids], scores, atol=ATOL)


def assert_rescored(
    ids: np.ndarray,
    scores: np.ndarray,
    first_pass: np.ndarray,
    exact: np.ndarray,
    k: int,
    oversample: int,
) -> None:
    """Rescored top k: candidates from the first pass's k*oversample best, ranked exactly.

    Candidates tied at the cut-off may or may not have been taken; every
    document strictly above the cut must have been.
    """
    m = min(k * oversample, first_pass.size)
    cut = np.sort(first_pass)[::-1][m - 1]
    assert len(ids) == min(k, m)
    assert np.all(first_pass[ids] >= cut - ATOL), "a result was not a first-pass candidate"
    np.testing.assert_allclose(exact[ids], scores, atol=ATOL)
    assert np.all(np.diff(scores) <= ATOL), "results are not sorted"
    sure = np.flatnonzero(first_pass > cut + ATOL)
    missing = np.setdiff1d(sure, ids)
    if len(ids) == k and missing.size:
        assert exact[missing].max() <= scores.min() + ATOL, "a better candidate was dropped"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def publish_broken(root: Path) -> Path:
    """A copy of the current version with one corrupted file, made current."""
    source = (root / "current").resolve()
    broken = source.parent / "v9999"
    shutil.copytree(source, broken)
    docs = broken / "docs.sqlite"
    os.chmod(docs, 0o644)
    data = bytearray(docs.read_bytes())
    data[-1] ^= 0xFF
    docs.write_bytes(bytes(data))
    link = root / ".current.test.tmp"
    os.symlink("versions/v9999", link)
    os.replace(link, root / "current")
    return broken
