"""Servers under test as subprocesses on 127.0.0.1: start, wait ready, measure CPU, stop.

Every server (tandem, the naive FastAPI app, infinity-emb) runs in its own
process, one at a time, so none of them competes with another for the two
cores; the benchmark process itself is the client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

HOST = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A server under test exited or never became ready; the message has its log tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """One server under test: its command, port, log file and process."""

    name: str
    command: list[str]
    port: int
    log: Path
    ready_path: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    startup_s: float = 0.0

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerStartError(f"{self.name} is not running")
        return self.proc.pid

    def start(self, timeout_s: float) -> ServerProcess:
        started = time.perf_counter()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            if _get(f"http://{HOST}:{self.port}{self.ready_path}") == 200:
                self.startup_s = time.perf_counter() - started
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerStartError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its children so far."""
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
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.NoSuchProcess:
            return float("nan")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def running(server: ServerProcess, timeout_s: float = 300.0) -> Iterator[ServerProcess]:
    server.start(timeout_s)
    try:
        yield server
    finally:
        server.stop()


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except (urllib.error.URLError, OSError, ValueError):
        return 0


def post_json(port: int, path: str, body: dict[str, object]) -> dict[str, object]:
    """One request outside the measured runs (a sanity check of what a server answers)."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return dict(json.loads(response.read()))


def listen_args(port: int) -> list[str]:
    """Where a server under test listens (loopback only) and how little it logs."""
    return ["--host", HOST, "--port", str(port), "--log-level", "warning"]


def tandem_server(
    bundle: Path, student: Path, log_dir: Path, name: str, extra: tuple[str, ...] = ()
) -> ServerProcess:
    """``tandem serve`` with its defaults (one worker, all cores), on a free port."""
    port = free_port()
    command = [
        sys.executable,
        "-c",
        "from tandem.cli import app; app()",
        "serve",
        "--bundle",
        str(bundle),
        "--student",
        str(student),
        *listen_args(port),
        *extra,
    ]
    return ServerProcess(name, command, port, log_dir / f"{name}.log", "/readyz")
