"""The student view stays in step with the teacher's documents through every writer.

Row i of the student view must be document i embedded by the student, after a
build, an add, a delete, an add-variant, an add-view, and a build killed
mid-way in either view and resumed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tandem.bundle.format import STUDENT_VIEW, Bundle, open_bundle, verify_bundle
from tandem.indexer.build import BuildError, EmbedSettings, build_bundle
from tandem.indexer.update import add_documents, add_variants, delete_documents
from tandem.indexer.views import StudentSide, add_view, student_side
from tandem.models.embedding_cache import EmbeddingCache, encode_cached
from tandem.models.encoder import Encoder

from tandem.data.corpus import Doc
from tests.support.index import NEW_DOCS, TOPICS, write_jsonl

VIEW_VARIANTS = ["f32-384", "bin-384"]


def _texts(bundle: Bundle) -> list[str]:
    return [d.text for d in bundle.documents(range(bundle.n_docs))]


def assert_in_step(bundle: Bundle, teacher: Encoder, student: Encoder) -> None:
    """Every row of both views is its own document's vector; every variant holds every row."""
    view = bundle.view(STUDENT_VIEW)
    assert view is not None
    texts = _texts(bundle)
    for vectors, encoder in ((bundle.vectors, teacher), (view.vectors, student)):
        expected = encode_cached(encoder, texts, "document", EmbeddingCache.for_encoder(encoder))
        got = np.asarray(vectors, dtype=np.float32)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=2e-3)
        assert ((got @ expected.T).argmax(axis=1) == np.arange(len(texts))).all()
    for name in view.variant_names():
        assert view.index(name).ntotal == bundle.n_docs
    for name in bundle.variant_names():
        assert bundle.index(name).ntotal == bundle.n_docs
    assert view.info.fingerprint == student.card.fingerprint
    verify_bundle(bundle.path)


def docs(n: int, prefix: str = "d") -> list[Doc]:
    sentences = [s for group in TOPICS.values() for s in group]
    return [Doc(f"{prefix}{i}", f"{sentences[i % len(sentences)]} ({i})") for i in range(n)]


@pytest.fixture(scope="module")
def side(aligned_student_dir: Path) -> StudentSide:
    return student_side("test-sample-student", aligned_student_dir)


@pytest.fixture(scope="module")
def view_root(
    tmp_path_factory: pytest.TempPathFactory, teacher: Encoder, side: StudentSide
) -> Path:
    root = tmp_path_factory.mktemp("views") / "root"
    build_bundle(
        docs(24),
        root,
        teacher,
        ["f32-768", "bin-768"],
        settings=EmbedSettings(checkpoint_every=8),
        student=side,
        student_variants=VIEW_VARIANTS,
    )
    return root


def test_build_with_a_student_writes_both_views(
    view_root: Path, teacher: Encoder, student: Encoder, side: StudentSide
) -> None:
    with open_bundle(view_root) as bundle:
        assert_in_step(bundle, teacher, student)
        info = bundle.manifest.views[STUDENT_VIEW]
        assert info.encoder_name == student.name  # the aligned student's native output
        assert info.fused_weight == side.fused_weight
        assert "label-free" in info.fused_weight_source
        assert sorted(info.variants) == sorted(VIEW_VARIANTS)
        assert bundle.sizes()["student-bin-384"] == info.variants["bin-384"].bytes


def test_add_delete_and_add_variant_keep_the_views_in_step(
    view_root: Path, tmp_path: Path, teacher: Encoder, student: Encoder, side: StudentSide
) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(view_root, root, symlinks=True)
    new = [Doc(i, f"{title} {text}") for i, title, text in NEW_DOCS]
    with pytest.raises(BuildError, match="--student test-sample-student"):
        add_documents(root, new, teacher)
    add_documents(root, new, teacher, student=side)
    with open_bundle(root) as bundle:
        assert bundle.n_docs == 27
        assert_in_step(bundle, teacher, student)
    delete_documents(root, ["d3", "new-2", "d17"])
    with open_bundle(root) as bundle:
        assert bundle.n_docs == 24 and "d3" not in bundle.external_ids()
        assert_in_step(bundle, teacher, student)
    add_variants(root, ["int8-768"])
    with open_bundle(root) as bundle:
        assert_in_step(bundle, teacher, student)
        parent = bundle.manifest.build["parent"]
        old = root / "versions" / parent / "views" / "student" / "vectors.f16.npy"
        assert old.stat().st_ino == bundle.view(STUDENT_VIEW).vectors_file.stat().st_ino  # type: ignore[union-attr]


def test_add_view_to_an_existing_bundle(
    tmp_path: Path, teacher: Encoder, student: Encoder, side: StudentSide
) -> None:
    root = tmp_path / "root"
    first = build_bundle(docs(16), root, teacher, ["f32-768"])
    with open_bundle(root) as bundle:
        assert bundle.view(STUDENT_VIEW) is None
    add_view(root, side, VIEW_VARIANTS)
    with open_bundle(root) as bundle:
        assert_in_step(bundle, teacher, student)
        assert (first / "vectors.f16.npy").stat().st_ino == bundle.vectors_file.stat().st_ino
    with pytest.raises(BuildError, match="already has a student view"):
        add_view(root, side, VIEW_VARIANTS)


def test_a_view_by_another_encoder_is_refused(
    view_root: Path, tmp_path: Path, teacher: Encoder, teacher_dir: Path
) -> None:
    import shutil

    root = tmp_path / "root"
    shutil.copytree(view_root, root, symlinks=True)
    wrong = student_side("all-mpnet-base-v2", teacher_dir)
    with pytest.raises(BuildError, match="student view was embedded by"):
        add_documents(root, docs(2, "x"), teacher, student=wrong)


# ------------------------------------------------------------------ kill -9 in each view


def tandem_index(*args: str) -> list[str]:
    return [sys.executable, "-c", "from tandem.cli import app; app()", "index", *args]


def _state(root: Path) -> dict[str, int]:
    try:
        return json.loads((root / ".build" / "state.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["chunks_done", "student_chunks_done"])
def test_build_killed_in_either_view_resumes_in_step(
    tmp_path: Path, phase: str, teacher: Encoder, student: Encoder, aligned_student_dir: Path
) -> None:
    rows = [{"id": f"k{i:03d}", "text": d.text} for i, d in enumerate(docs(48))]
    corpus = write_jsonl(tmp_path / "facts.jsonl", rows)
    root = tmp_path / "root"
    command = tandem_index(
        "build",
        str(corpus),
        "--out",
        str(root),
        "--variants",
        "f32-768,bin-768",
        "--student",
        str(aligned_student_dir),
        "--student-variants",
        ",".join(VIEW_VARIANTS),
        "--checkpoint-every",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while int(_state(root).get(phase, 0)) < 2:
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()
        assert time.monotonic() < deadline, f"the build never reached {phase} 2"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = _state(root)
    assert int(state[phase]) < 24, "the build must be killed mid-way"
    if phase == "chunks_done":
        assert int(state["student_chunks_done"]) == 0
    assert not (root / "current").exists()

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    with open_bundle(root) as bundle:
        assert bundle.manifest.build["resumed"] == 1
        assert bundle.external_ids() == [f"k{i:03d}" for i in range(48)]
        assert_in_step(bundle, teacher, student)
    student_cache = EmbeddingCache.for_encoder(student, root=tmp_path / "cache")
    assert len(student_cache) == 48  # each document embedded into the checkpoint store once


def test_cli_add_view_then_add_embeds_both_views(
    tmp_path: Path, teacher: Encoder, student: Encoder, aligned_student_dir: Path
) -> None:
    from tandem.indexer.cli import app
    from typer.testing import CliRunner

    root = tmp_path / "root"
    build_bundle(docs(12), root, teacher, ["f32-768"])
    runner = CliRunner()
    added = runner.invoke(
        app,
        [
            "add-view",
            str(root),
            "--student",
            str(aligned_student_dir),
            "--student-variants",
            "bin-384",
        ],
    )
    assert added.exit_code == 0, added.output
    assert "student-bin-384" in added.output and "fused weight" in added.output
    rows = [{"id": f"cli{i}", "text": f"A new document about topic {i}."} for i in range(3)]
    more = runner.invoke(app, ["add", str(root), str(write_jsonl(tmp_path / "more.jsonl", rows))])
    assert more.exit_code == 0, more.output
    with open_bundle(root) as bundle:
        assert bundle.n_docs == 15
        assert_in_step(bundle, teacher, student)
    again = runner.invoke(app, ["add-view", str(root), "--student", str(aligned_student_dir)])
    assert again.exit_code == 1 and "already has a student view" in again.output
