"""Teacher indexing on Ray Data equals the single-process build, survives actor deaths, resumes.

One local Ray instance (2 CPUs, no dashboard) serves the whole session; the
CLI tests connect to it by address, as a job on a cluster would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from tandem.bundle.format import open_bundle
from tandem.bundle.variants import search_variant
from tandem.indexer.build import BuildError, build_bundle
from tandem.indexer.ray_engine import InjectedFault, RayEngine, shard_name
from tandem.models.encoder import Encoder

from tandem.data.corpus import read_corpus
from tests.support.index import QUERIES, write_jsonl

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus.jsonl"
N_DOCS = 36
SHARD = 8  # 36 docs -> 5 shards, the last one short
VARIANTS = ["f32-768", "f32-256", "int8-768", "bin-768", "f32-768-hnsw"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One local Ray instance for the session; its address lets subprocesses join it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines()[:N_DOCS]]
    return write_jsonl(tmp_path_factory.mktemp("ray-corpus") / "docs.jsonl", rows)


@pytest.fixture(scope="session")
def local_root(
    tmp_path_factory: pytest.TempPathFactory, small_corpus: Path, teacher: Encoder
) -> Path:
    root = tmp_path_factory.mktemp("local") / "bundle"
    build_bundle(read_corpus(small_corpus), root, teacher, VARIANTS, use_cache=False)
    return root


def engine(teacher: Encoder, **kwargs: object) -> RayEngine:
    return RayEngine(teacher_dir=teacher.folder, shard_size=SHARD, **kwargs)  # type: ignore[arg-type]


class Phases:
    """Progress that remembers where each phase started (to see what a resume skipped)."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[int, int]] = {}

    def phase(self, name: str, total: int, done: int = 0) -> None:
        self.started[name] = (total, done)

    def advance(self, n: int) -> None:
        return None


def assert_same_bundle(ray_root: Path, local_root: Path, teacher: Encoder) -> None:
    queries = teacher.encode(QUERIES, "query")
    with open_bundle(ray_root) as got, open_bundle(local_root) as want:
        assert got.external_ids() == want.external_ids()
        a = np.asarray(got.vectors, dtype=np.float32)
        b = np.asarray(want.vectors, dtype=np.float32)
        cosine = np.einsum("ij,ij->i", a, b) / (
            np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        )
        assert cosine.min() >= 0.9999, cosine.min()
        assert sorted(got.variant_names()) == sorted(want.variant_names()) == sorted(VARIANTS)
        for name in VARIANTS:
            spec = got.spec(name)
            _s, got_ids = search_variant(spec, got.index(name), queries, 10, 64)
            _s, want_ids = search_variant(spec, want.index(name), queries, 10, 64)
            assert (got_ids == want_ids).all(), name
        assert got.manifest.build["settings"]["embedding"]["engine"] == "ray"


def test_ray_build_equals_the_single_process_build(
    ray_address: str, small_corpus: Path, local_root: Path, teacher: Encoder, tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    progress = Phases()
    built = build_bundle(
        read_corpus(small_corpus), root, teacher, VARIANTS,
        engine=engine(teacher, actors=1), progress=progress,
    )  # fmt: skip
    assert progress.started["embedding (ray)"] == (N_DOCS, 0)
    assert not (root / ".build").exists()
    assert built.parent.name == "versions"
    assert_same_bundle(root, local_root, teacher)


def test_a_dead_actor_is_restarted_and_its_shard_retried(
    ray_address: str, small_corpus: Path, local_root: Path, teacher: Encoder, tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    build_bundle(
        read_corpus(small_corpus), root, teacher, VARIANTS,
        engine=engine(teacher, retries=1, fault=InjectedFault(shard=2, times=1)),
    )  # fmt: skip
    assert_same_bundle(root, local_root, teacher)


def test_an_actor_that_keeps_dying_fails_the_build_naming_the_shard_then_resume_finishes(
    ray_address: str, small_corpus: Path, local_root: Path, teacher: Encoder, tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    with pytest.raises(BuildError, match=shard_name(3)) as failed:
        build_bundle(
            read_corpus(small_corpus), root, teacher, VARIANTS,
            engine=engine(teacher, retries=1, fault=InjectedFault(shard=3, times=5)),
        )  # fmt: skip
    assert "--resume" in str(failed.value)
    assert not (root / "current").exists() and not list((root / "versions").glob("v*"))
    written = sorted(p.name for p in (root / ".build" / "embeddings").glob("shard-*.parquet"))
    assert shard_name(3) not in written
    kept_rows = sum(min(N_DOCS, (int(n[6:11]) + 1) * SHARD) - int(n[6:11]) * SHARD for n in written)

    progress = Phases()
    build_bundle(
        read_corpus(small_corpus), root, teacher, VARIANTS,
        engine=engine(teacher), resume=True, progress=progress,
    )  # fmt: skip
    assert progress.started["embedding (ray)"] == (N_DOCS, kept_rows)  # finished shards skipped
    assert_same_bundle(root, local_root, teacher)
    with open_bundle(root) as bundle:
        assert bundle.manifest.build["resumed"] == 1


def tandem_index(*args: str) -> list[str]:
    return [sys.executable, "-c", "from tandem.cli import app; app()", "index", *args]


def test_cli_build_killed_mid_way_resumes_on_the_same_ray_cluster(
    ray_address: str, small_corpus: Path, local_root: Path, teacher: Encoder, tmp_path: Path
) -> None:
    root = tmp_path / "bundle"
    command = tandem_index(
        "build", str(small_corpus), "--out", str(root), "--variants", ",".join(VARIANTS),
        "--engine", "ray", "--ray-address", ray_address, "--shard-size", "4",
    )  # fmt: skip
    shards = root / ".build" / "embeddings"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while len(list(shards.glob("shard-*.parquet"))) < 2:
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.monotonic() < deadline, "the Ray build never wrote two shards"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "current").exists()

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout
    assert_same_bundle(root, local_root, teacher)


def test_cli_refuses_an_unknown_engine(small_corpus: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        tandem_index("build", str(small_corpus), "--out", str(tmp_path / "b"), "--engine", "spark"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "--engine must be local or ray" in done.stderr
