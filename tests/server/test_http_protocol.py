"""The HTTP parser a real ``tandem serve`` runs: httptools, with a bound on request heads."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from tandem.server.http import MAX_HEAD_BYTES

from tests.support.server import HOST, ServerProcess

pytestmark = pytest.mark.slow


def exchange(server: ServerProcess, chunks: list[bytes], pause_s: float = 0.0) -> bytes:
    """Send raw bytes (optionally in pauses) and read until the server closes or answers."""
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                if pause_s:
                    time.sleep(pause_s)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed while we were still sending: read its answer
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer


def head(padding: int) -> bytes:
    return (
        f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nX-Padding: {'a' * padding}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def test_a_head_under_the_bound_is_served(server: ServerProcess) -> None:
    answer = exchange(server, [head(MAX_HEAD_BYTES // 2)])
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"alive"' in answer


def test_a_head_over_the_bound_gets_431_and_a_json_reason(server: ServerProcess) -> None:
    answer = exchange(server, [head(MAX_HEAD_BYTES + 1024)])
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431"), answer[:200]
    assert json.loads(body)["type"] == "header_too_large"
    assert str(MAX_HEAD_BYTES).encode() in body


def test_a_head_trickled_in_small_pieces_is_bounded_too(server: ServerProcess) -> None:
    """No single chunk is large, and the head never completes: the total is what counts."""
    start = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nX-Padding: ".encode()
    chunks = [start] + [b"a" * 1024] * (MAX_HEAD_BYTES // 1024 + 4)
    answer = exchange(server, chunks, pause_s=0.002)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


def test_a_large_body_is_not_counted_as_head(server: ServerProcess, client: httpx.Client) -> None:
    """Bodies have their own limit (413); a long query text under it is served."""
    query = "malaria vaccine " * (2 * MAX_HEAD_BYTES // 16)
    response = client.post("/search", json={"query": query, "k": 3})
    assert response.status_code == 200, response.text
    assert response.json()["truncated"] is True  # cut to the model's length, not refused
