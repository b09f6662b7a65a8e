"""Interrupted builds resume to exactly the document set of an uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tandem.bundle.format import open_bundle, verify_bundle
from tandem.indexer.build import BuildError, EmbedSettings, build_bundle
from tandem.models.embedding_cache import EmbeddingCache
from tandem.models.encoder import Encoder

from tandem.data.corpus import Doc, read_corpus
from tests.support.index import TOPICS, HashEncoder, write_jsonl

SENTENCES = [s for sentences in TOPICS.values() for s in sentences]


def fact_rows(n: int) -> list[dict[str, object]]:
    return [
        {"id": f"f{i:03d}", "text": f"Fact {i}: {SENTENCES[i % len(SENTENCES)]}"} for i in range(n)
    ]


def tandem_index(*args: str) -> list[str]:
    """``tandem index ARGS`` in a fresh interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-c", "from tandem.cli import app; app()", "index", *args]


def read_state(root: Path) -> dict[str, object]:
    try:
        return json.loads((root / ".build" / "state.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_sigkilled_build_resumes_with_the_same_ids_and_vectors(
    tmp_path: Path, teacher: Encoder
) -> None:
    corpus = write_jsonl(tmp_path / "facts.jsonl", fact_rows(64))
    root = tmp_path / "root"
    command = tandem_index(
        "build", str(corpus), "--out", str(root), "--variants", "f32-768,bin-768",
        "--checkpoint-every", "4", "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while int(read_state(root).get("chunks_done", 0)) < 2:  # type: ignore[call-overload]
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.monotonic() < deadline, "the build never reached its second checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(read_state(root)["chunks_done"])  # type: ignore[call-overload]
    assert 2 <= killed_at < 16, "the build must be killed mid-way"
    assert not (root / "current").exists()

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (root / ".build").exists()

    reference = build_bundle(
        read_corpus(corpus),
        tmp_path / "reference",
        teacher,
        ["f32-768", "bin-768"],
        settings=EmbedSettings(checkpoint_every=4),
        use_cache=False,
    )
    verify_bundle(root)
    with open_bundle(root) as resumed, open_bundle(reference) as fresh:
        assert resumed.manifest.build["resumed"] == 1
        assert resumed.n_docs == fresh.n_docs == 64
        assert resumed.external_ids() == fresh.external_ids() == [f"f{i:03d}" for i in range(64)]
        got, want = np.asarray(resumed.vectors), np.asarray(fresh.vectors)
        np.testing.assert_allclose(np.linalg.norm(got.astype(np.float32), axis=1), 1.0, atol=2e-3)
        np.testing.assert_allclose(got, want, atol=2e-3)
        nearest = (got.astype(np.float32) @ want.astype(np.float32).T).argmax(axis=1)
        assert nearest.tolist() == list(range(64))  # every row is its own document's vector
        assert resumed.index("f32-768").ntotal == resumed.index("bin-768").ntotal == 64
    cache = EmbeddingCache.for_encoder(teacher, root=tmp_path / "cache")
    assert len(cache) == 64  # each document embedded into the checkpoint store once


class InterruptingEncoder(HashEncoder):
    """Raises KeyboardInterrupt (what Ctrl-C does) on the n-th encode call."""

    def __init__(self, interrupt_at: int) -> None:
        super().__init__(dim=32)
        self.calls = 0
        self.interrupt_at = interrupt_at

    def encode(self, texts: Sequence[str], *args: object, **kwargs: object) -> np.ndarray:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().encode(texts, *args, **kwargs)  # type: ignore[arg-type]


def docs(n: int) -> list[Doc]:
    return [Doc(f"d{i}", f"text number {i} " + "x" * (i % 7), {"i": i}) for i in range(n)]


def test_ctrl_c_then_resume_equals_an_uninterrupted_build(tmp_path: Path) -> None:
    settings = EmbedSettings(checkpoint_every=10)
    encoder = InterruptingEncoder(interrupt_at=4)
    root = tmp_path / "root"
    with pytest.raises(KeyboardInterrupt):
        build_bundle(docs(95), root, encoder, ["f32-32"], settings=settings, use_cache=False)
    state = read_state(root)
    assert state["chunks_done"] == 3 and state["staged"] is True
    resumed = build_bundle(
        docs(95), root, HashEncoder(32), ["f32-32"], settings=settings, use_cache=False, resume=True
    )
    fresh = build_bundle(docs(95), tmp_path / "fresh", HashEncoder(32), ["f32-32"], use_cache=False)
    with open_bundle(resumed) as a, open_bundle(fresh) as b:
        assert a.external_ids() == b.external_ids()
        np.testing.assert_array_equal(a.vectors, b.vectors)
        assert a.manifest.build["resumed"] == 1


def test_resume_refuses_changed_settings_and_fresh_build_discards_old_work(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(KeyboardInterrupt):
        build_bundle(docs(30), root, InterruptingEncoder(2), ["f32-32"], use_cache=False,
                     settings=EmbedSettings(checkpoint_every=10))  # fmt: skip
    with pytest.raises(BuildError, match=r"different settings \(vectors_dtype changed\)"):
        build_bundle(docs(30), root, HashEncoder(32), ["f32-32"], use_cache=False, resume=True,
                     vectors_dtype="f32")  # fmt: skip
    path = build_bundle(docs(30), root, HashEncoder(32), ["f32-32"], use_cache=False)
    with open_bundle(path) as bundle:
        assert bundle.n_docs == 30 and bundle.manifest.build["resumed"] == 0


def test_bad_corpus_leaves_nothing_to_resume(tmp_path: Path) -> None:
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"id": "a", "text": "fine"}\n{"id": "b"}\n')
    with pytest.raises(Exception, match=r"bad\.jsonl:2: no 'text' field"):
        build_bundle(read_corpus(corpus), tmp_path / "root", HashEncoder(32), ["f32-32"])
    assert not (tmp_path / "root" / ".build").exists()
    assert not (tmp_path / "root" / "current").exists()
