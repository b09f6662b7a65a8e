"""Startup refusals: a clear message and a non-zero exit before the port is bound."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tandem.server.state import StartupCheckError, preflight
from typer.testing import CliRunner

from tandem.cli import app
from tests.support.server import free_port, serve_command

pytestmark = pytest.mark.slow


def fake_student(folder: Path, teacher_dir: Path, aligned_to: dict | None) -> Path:  # type: ignore[type-arg]
    """A 768-d artifact with the teacher's files but its own identity (so not the teacher)."""
    folder.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        os.symlink(teacher_dir / name, folder / name)
    card = json.loads((teacher_dir / "card.json").read_text())
    card.update(name=folder.name, weights_sha256="0" * 64, aligned_to=aligned_to)
    card.pop("fingerprint", None)
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def broken_bundle(tmp_path_factory: pytest.TempPathFactory, bundle_root: Path) -> Path:
    version = tmp_path_factory.mktemp("broken") / "v0001"
    shutil.copytree((bundle_root / "current").resolve(), version)
    vectors = version / "vectors.f16.npy"
    os.chmod(vectors, 0o644)
    data = bytearray(vectors.read_bytes())
    data[-3] ^= 0x55
    vectors.write_bytes(bytes(data))
    return version


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["serve", "--port", str(free_port()), *args])
    return result.exit_code, result.output


def test_unaligned_student_is_refused_by_a_real_process(
    tmp_path: Path, bundle_root: Path, student_dir: Path
) -> None:
    port = free_port()
    args = [
        "--bundle",
        str(bundle_root),
        "--student",
        str(student_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    done = subprocess.run(serve_command(*args), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "384 dims" in done.stderr and "align" in done.stderr
    assert "Uvicorn running" not in done.stderr + done.stdout


def test_uvicorn_factory_refuses_too(tmp_path: Path, bundle_root: Path, student_dir: Path) -> None:
    """Started without the CLI, the worker runs the same checks and fails its startup."""
    env = {**os.environ, "TANDEM_BUNDLE": str(bundle_root), "TANDEM_STUDENT": str(student_dir)}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "tandem.server.app:create_app_from_env",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert "384 dims" in done.stderr and "Application startup failed" in done.stderr


@pytest.mark.parametrize(
    ("aligned_to", "message"),
    [
        (None, "is not aligned to the bundle's teacher"),
        (
            {
                "teacher_name": "other-teacher",
                "teacher_fingerprint": "f" * 64,
                "method": "adapter",
                "n_texts": 1,
            },
            "is aligned to other-teacher",
        ),
    ],
)
def test_student_of_the_right_size_but_not_aligned(
    tmp_path: Path,
    bundle_root: Path,
    teacher_dir: Path,
    aligned_to: dict | None,
    message: str,  # type: ignore[type-arg]
) -> None:
    student = fake_student(tmp_path / "impostor", teacher_dir, aligned_to)
    code, output = invoke("--bundle", str(bundle_root), "--student", str(student))
    assert code == 2 and message in output and "--allow-unaligned" in output
    # The override is accepted (and the rest of the checks still run).
    assert preflight(bundle_root, str(student), [], allow_unaligned=True).name == "v0001"


def test_bundle_failing_verification(broken_bundle: Path, query_encoder_dir: Path) -> None:
    code, output = invoke("--bundle", str(broken_bundle), "--student", str(query_encoder_dir))
    assert code == 2 and "failed verification" in output and "vectors.f16.npy" in output


def test_missing_variant(bundle_root: Path, query_encoder_dir: Path) -> None:
    code, output = invoke(
        "--bundle", str(bundle_root), "--student", str(query_encoder_dir), "--variant", "int8-256"
    )
    assert code == 2 and "int8-256" in output and "f32-768" in output


def test_missing_bundle_and_settings(
    tmp_path: Path, query_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, output = invoke("--bundle", str(tmp_path / "nope"), "--student", str(query_encoder_dir))
    assert code == 2 and "does not exist" in output
    monkeypatch.delenv("TANDEM_STUDENT", raising=False)
    code, output = invoke("--bundle", str(tmp_path))
    assert code == 2 and "student" in output
    code, output = invoke("--bundle", str(tmp_path), "--student", "x", "--max-wait-ms", "-1")
    assert code == 2 and "max_wait_ms" in output


def test_env_vars_configure_the_cli(
    bundle_root: Path, query_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_BUNDLE", str(bundle_root))
    monkeypatch.setenv("TANDEM_STUDENT", str(query_encoder_dir))
    monkeypatch.setenv("TANDEM_VARIANT", "f32-768,int8-999")
    code, output = invoke()
    assert code == 2 and "int8-999" in output
    with pytest.raises(StartupCheckError, match="int8-999"):
        preflight(bundle_root, str(query_encoder_dir), ["int8-999"], allow_unaligned=False)


def test_workers_that_cannot_load_stop_the_server(
    tmp_path: Path, bundle_root: Path, query_encoder_dir: Path
) -> None:
    """The card passes every preflight check but the ONNX file is garbage: exit 3, no server."""
    broken = tmp_path / "broken-student"
    broken.mkdir()
    shutil.copy(query_encoder_dir / "card.json", broken / "card.json")
    shutil.copy(query_encoder_dir / "tokenizer.json", broken / "tokenizer.json")
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    args = [
        "--bundle",
        str(bundle_root),
        "--student",
        str(broken),
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]
    done = subprocess.run(serve_command(*args), capture_output=True, text=True, timeout=180)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "cannot load" in done.stderr
