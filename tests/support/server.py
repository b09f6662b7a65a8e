"""Helpers for server tests and benchmarks: constants, sample documents, real server processes."""

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

HOST = "127.0.0.1"
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
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def serve_command(*args: str) -> list[str]:
    """``tandem serve ARGS`` in a fresh interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-c", "from tandem.cli import app; app()", "serve", *args]


class ServerStartError(RuntimeError):
    """A server exited or never became ready; the message has its log tail."""


class ServerProcess:
    """A real server process on 127.0.0.1: started, probed until ready, measured, stopped.

    The one harness for tests and benchmarks: ``tandem serve`` (see
    :func:`tandem_serve`) and the peers bench/ compares it with.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        log: Path,
        ready_path: str = "/readyz",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log = log
        self.ready_path = ready_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0  # from spawn to the first ready answer

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerStartError(f"{self.name} is not running")
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> ServerProcess:
        started = time.perf_counter()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        while time.perf_counter() < started + timeout:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    self.startup_s = time.perf_counter() - started
                    return self
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"{self.name} not ready after {timeout:.0f}s:\n{self.logs()}")

    def logs(self, chars: int = 6000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its children so far (NaN once gone)."""
        import psutil  # type: ignore[import-untyped]  # dev extra; only measurements need it

        try:
            root = psutil.Process(self.pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.NoSuchProcess:
            return float("nan")

    def rss_mib(self) -> float:
        """Resident memory of the server and its children (NaN once gone)."""
        import psutil  # type: ignore[import-untyped]

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
            return float(sum(p.memory_info().rss for p in procs) / 2**20)
        except psutil.NoSuchProcess:
            return float("nan")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; the exit code (None if never started)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


def tandem_serve(
    args: list[str], log: Path, env: dict[str, str] | None = None, name: str = "server"
) -> ServerProcess:
    """``tandem serve ARGS`` on a free loopback port."""
    port = free_port()
    command = serve_command(*args, "--host", HOST, "--port", str(port))
    return ServerProcess(name, command, port, log, "/readyz", env)


@contextlib.contextmanager
def running(server: ServerProcess, timeout: float = 300.0) -> Iterator[ServerProcess]:
    """Start ``server``, yield it ready, stop it however the block ends."""
    server.start(timeout)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_server(
    tmp_path: Path, args: list[str], env: dict[str, str] | None = None, name: str = "server"
) -> Iterator[ServerProcess]:
    """``tandem serve ARGS``, ready, logging to ``tmp_path/NAME.log``."""
    with running(tandem_serve(args, tmp_path / f"{name}.log", env, name), 120.0) as server:
        yield server


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
