"""The servers bench/ measures, as commands for the shared harness in tests/support/server.py.

Every server (tandem, the naive FastAPI app, infinity-emb) runs in its own
process, one at a time, so none of them competes with another for the two
cores; the benchmark process itself is the client. Starting, probing,
measuring (CPU, RSS) and stopping them is ``tests.support.server.ServerProcess``,
the harness the tests use too (bench runs from the repository root, so
``tests`` imports as a package).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.server import HOST, ServerProcess, free_port, serve_command


def listen_args(port: int) -> list[str]:
    """Where a server under test listens (loopback only) and how little it logs."""
    return ["--host", HOST, "--port", str(port), "--log-level", "warning"]


def tandem_server(
    bundle: Path, student: Path, log_dir: Path, name: str, extra: tuple[str, ...] = ()
) -> ServerProcess:
    """``tandem serve`` with its defaults (one worker, all cores), on a free port."""
    port = free_port()
    args = ["--bundle", str(bundle), "--student", str(student), *listen_args(port), *extra]
    return ServerProcess(name, serve_command(*args), port, log_dir / f"{name}.log", "/readyz")
