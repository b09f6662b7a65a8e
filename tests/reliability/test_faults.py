"""Faults: corrupt bundle files, and a disk that fills up while a version is published.

Elsewhere: SIGKILL during indexing then ``--resume`` is
tests/indexer/test_build_resume.py; a reload to a broken bundle while the
old one keeps serving is tests/server/test_reliability.py and
test_hotswap.py; SIGTERM under load is test_shutdown.py here.

A full disk is simulated with RLIMIT_FSIZE in the child process that
publishes (no root needed for a small tmpfs): with SIGXFSZ ignored, a write
past the limit fails with EFBIG, as a write to a full disk fails with
ENOSPC, and SQLite reports it as a disk I/O error.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tandem.bundle.format import open_bundle, verify_bundle
from typer.testing import CliRunner

from tandem.cli import app as tandem_app
from tests.support.server import free_port

pytestmark = pytest.mark.slow
WIDE = {"COLUMNS": "1000"}  # one line per message, whatever the terminal


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    path.write_bytes(b"")


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "bit-flipped": flip_a_bit,
    "emptied": empty,
}
FILES = [
    "manifest.json",
    "manifest.sha256",
    "vectors.f16.npy",
    "docs.sqlite",
    "variants/f32-768.faiss",
    "variants/bin-768.faiss",
]


def writable_copy(version: Path, dest: Path) -> Path:
    shutil.copytree(version, dest)
    for path in [dest, *dest.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return dest


@pytest.mark.parametrize("corruption", CORRUPTIONS)
@pytest.mark.parametrize("rel", FILES)
def test_a_corrupt_bundle_file_is_refused_with_a_clear_message(
    tmp_path: Path, reliability_bundle: Path, student_arg: str, rel: str, corruption: str
) -> None:
    version = writable_copy((reliability_bundle / "current").resolve(), tmp_path / "v0001")
    CORRUPTIONS[corruption](version / rel)
    runner = CliRunner()

    verify = runner.invoke(tandem_app, ["index", "verify", str(version)], env=WIDE)
    assert verify.exit_code == 1, verify.output
    assert "Traceback" not in verify.output and verify.output.startswith("error: ")
    assert Path(rel).name in verify.output and "rebuild or restore" in verify.output

    port = str(free_port())
    serve = runner.invoke(
        tandem_app,
        ["serve", "--bundle", str(version), "--student", student_arg, "--port", port],
        env=WIDE,
    )
    assert serve.exit_code == 2, serve.output
    assert Path(rel).name in serve.output and "rebuild or restore" in serve.output
    assert "Uvicorn running" not in serve.output


# ------------------------------------------------------------------ full disk

NEW_DOCS = [
    {"id": "new-1", "text": "A pulsar is a rotating neutron star that emits beams of radiation."},
    {"id": "new-2", "text": "Espresso is brewed by forcing hot water through ground coffee."},
]
MANY_DOCS = [{"id": f"many-{i}", "text": f"filler document number {i} " * 10} for i in range(30)]


def limited(limit: int) -> Callable[[], None]:
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG instead of killing the child."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def tandem_index(args: list[str], limit: int | None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from tandem.cli import app; app()", "index", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, **WIDE},
        preexec_fn=limited(limit) if limit is not None else None,
        timeout=300,
    )


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass(frozen=True)
class Publish:
    """A command that publishes a version, the file-size limit that breaks it, and why."""

    args: list[str]  # formatted with root, new, many, first_id, corpus
    limit: int
    cause: str
    # Re-run without the limit (skipped where it would only re-embed many documents).
    recover: bool = True


PUBLISHES = {
    "add: vectors file": Publish(["add", "{root}", "{new}", "--no-cache"], 48 << 10,
                                 "File too large"),
    "add: documents table": Publish(["add", "{root}", "{many}", "--no-cache"], 32 << 10,
                                    "disk I/O error", recover=False),
    "delete": Publish(["delete", "{root}", "--ids", "{first_id}"], 48 << 10, "File too large"),
    "add-variant: FAISS index": Publish(["add-variant", "{root}", "f32-768-hnsw"], 48 << 10,
                                        "File too large"),
    "build into the root": Publish(["build", "{corpus}", "--out", "{root}", "--variants",
                                    "f32-768", "--no-cache"], 48 << 10, "File too large",
                                   recover=False),
}  # fmt: skip


@pytest.mark.parametrize("name", PUBLISHES)
def test_a_full_disk_during_publish_leaves_the_previous_version_serving(
    tmp_path: Path, reliability_bundle: Path, name: str
) -> None:
    root = tmp_path / "root"
    shutil.copytree(reliability_bundle, root, symlinks=True)
    with open_bundle(root) as before:
        ids_before = before.external_ids()
    publish = PUBLISHES[name]
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl", [{"id": f"c{i}", "text": f"doc {i}"} for i in range(40)]
    )
    values = {
        "root": str(root),
        "new": str(write_jsonl(tmp_path / "new.jsonl", NEW_DOCS)),
        "many": str(write_jsonl(tmp_path / "many.jsonl", MANY_DOCS)),
        "first_id": ids_before[0],
        "corpus": str(corpus),
    }
    args = [a.format(**values) for a in publish.args]

    failed = tandem_index(args, publish.limit)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    message = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, failed.stderr
    assert publish.cause in message[0] and "nothing was published" in message[0], message
    assert ".stage-" in message[0] or "/.build/" in message[0], "the message names the file"

    # The previous version is intact, `current` did not move, nothing half-written is visible.
    assert os.readlink(root / "current") == "versions/v0001"
    assert sorted(os.listdir(root / "versions")) == ["v0001"]
    verify_bundle(root)
    with open_bundle(root) as after:
        assert after.version == "v0001" and after.external_ids() == ids_before

    if not publish.recover:
        return
    # With space again, the same command publishes the next version.
    done = tandem_index(args, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.readlink(root / "current") == "versions/v0002"
    verify_bundle(root)
    assert not list((root / "versions").glob(".stage-*"))
