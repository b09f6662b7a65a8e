"""Milvus for tests: the embedded milvus-lite 2.5 engine, as a file or as a local server.

``lite_server`` starts milvus-lite's own binary listening on 127.0.0.1 (a
real gRPC server over one ``.db`` file) so tests can kill and restart it
like a lost Milvus; a plain ``.db`` path is the embedded mode with no server.
Where ``TANDEM_TEST_MILVUS_URI`` names a reachable Milvus server, the tests
that take ``milvus_uri`` run against it as well.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from milvus_lite.server import Server

EXTERNAL_URI_ENV = "TANDEM_TEST_MILVUS_URI"


def external_uri() -> str | None:
    return os.environ.get(EXTERNAL_URI_ENV) or None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiteServer:
    """milvus-lite serving one .db file on a TCP port; stop/start simulate an outage."""

    db: Path
    port: int
    server: Server | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = Server(str(self.db), address=f"127.0.0.1:{self.port}")
        if not (server.init() and server.start()):
            raise RuntimeError(f"milvus-lite did not start on {self.db}")
        self.server = server
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("milvus-lite never accepted connections") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """Lose the server abruptly (SIGKILL), as a crashed or partitioned Milvus."""
        if self.server is not None:
            process = self.server._p  # the binary milvus-lite started
            if process is not None:
                process.kill()
                process.wait()
            self.server.stop()
            self.server = None


@contextmanager
def lite_server(db: Path) -> Iterator[LiteServer]:
    served = LiteServer(db, free_port())
    served.start()
    try:
        yield served
    finally:
        served.kill()
