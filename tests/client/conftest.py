"""Client fixtures: one small bundle and one real ``tandem serve`` for all client tests.

The bundle holds the first 40 sample documents (teacher vectors from the
shared embedding cache) in two variants; queries are embedded by the student
aligned to the teacher, as in production. The server requires an API key, so
every test also exercises the client's Bearer header.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tandem.indexer.build import build_bundle
from tandem.models.encoder import Encoder

from tests.support.server import API_KEY, ServerProcess, running_server, sample_docs

CLIENT_VARIANTS = ["f32-768", "bin-768"]
# Haystack reports pipeline runs to its telemetry service unless told not to.
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")


@pytest.fixture(scope="session")
def client_bundle(tmp_path_factory: pytest.TempPathFactory, teacher: Encoder) -> Path:
    root = tmp_path_factory.mktemp("client-bundle")
    build_bundle(sample_docs(), root, teacher, CLIENT_VARIANTS)
    return root


def serve_args(bundle: Path, student: Path, *extra: str) -> list[str]:
    return ["--bundle", str(bundle), "--student", str(student), *extra]


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, client_bundle: Path, aligned_student_dir: Path
) -> Iterator[ServerProcess]:
    """One worker with an API key over the client bundle; client tests only read from it."""
    tmp = tmp_path_factory.mktemp("client-server")
    args = serve_args(client_bundle, aligned_student_dir)
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}) as proc:
        yield proc


@pytest.fixture()
def tandem_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """TANDEM_URL and TANDEM_API_KEY pointing at the live server, as an application sets them."""
    monkeypatch.setenv("TANDEM_URL", server.url)
    monkeypatch.setenv("TANDEM_API_KEY", API_KEY)
    return server


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"
