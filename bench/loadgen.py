"""A closed-loop HTTP/1.1 load generator on asyncio streams, for 127.0.0.1 only.

Why not httpx or Locust: on a 2-core machine the client shares the cores
with the server it measures, so its own CPU cost is part of every number.
httpx spends about as much CPU per request as the server at concurrency 32;
this client pre-encodes every request, keeps one keep-alive connection per
virtual user and parses only the status line, the headers and a
``Content-Length`` (or chunked) body, which costs a fraction of that. Its CPU
time is measured and reported with every run, so the share it takes is
visible, and every server under test gets the same client.

Bounded: a run stops at ``max_requests`` or ``max_seconds``, whichever
comes first, and every request has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class RunResult:
    """One closed-loop run: latency percentiles, throughput, errors and client CPU."""

    concurrency: int
    requests: int  # answered, any status
    ok: int  # 2xx
    errors: int  # non-2xx, timeouts, broken connections
    wall_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float
    statuses: dict[int, int] = field(default_factory=dict)
    server_ms: dict[str, float] = field(default_factory=dict)  # mean of x-*-time headers
    # p50 / p99 of the same headers: where a tail comes from (inside the server or not)
    server_p50_ms: dict[str, float] = field(default_factory=dict)
    server_p99_ms: dict[str, float] = field(default_factory=dict)

    @property
    def qps(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "wall_s": self.wall_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "qps": self.qps,
            "client_cpu_s": self.client_cpu_s,
            "statuses": self.statuses,
            "server_ms": self.server_ms,
            "server_p50_ms": self.server_p50_ms,
            "server_p99_ms": self.server_p99_ms,
        }


def encode_post(host: str, port: int, path: str, body: bytes) -> bytes:
    """One keep-alive POST with a JSON body, as bytes on the wire."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bool]:
    """Read one response; returns status, lower-cased headers and whether to reconnect."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # data + CRLF
            if size == 0:
                break
    close = headers.get(b"connection", b"").lower() == b"close"
    return status, headers, close


def closed_loop(
    host: str,
    port: int,
    requests: list[bytes],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float = 30.0,
    timing_headers: tuple[str, ...] = (),
) -> RunResult:
    """``concurrency`` users, each sending its next request when the previous answer is in.

    ``requests`` are cycled through in order. ``timing_headers`` (e.g.
    ``x-embed-time``) are averaged over 2xx answers, in the server's unit.
    """
    if host not in LOOPBACK:
        raise ValueError(f"the load generator only targets this machine, not {host!r}")
    return asyncio.run(
        _run(
            host,
            port,
            requests,
            concurrency,
            max_requests,
            max_seconds,
            timeout_s,
            timing_headers,
        )
    )


async def _run(
    host: str,
    port: int,
    requests: list[bytes],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float,
    timing_headers: tuple[str, ...],
) -> RunResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    values: dict[str, list[float]] = {name: [] for name in timing_headers}
    wanted = {name.encode(): name for name in timing_headers}
    issued = 0
    cpu0 = time.process_time()
    started = time.perf_counter()
    deadline = started + max_seconds

    async def user() -> None:
        nonlocal issued, errors
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while issued < max_requests and time.perf_counter() < deadline:
            request = requests[issued % len(requests)]
            issued += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None  # narrowed for mypy: set together with writer
                t0 = time.perf_counter()
                writer.write(request)
                status, headers, close = await asyncio.wait_for(_read_response(reader), timeout_s)
                latencies.append(time.perf_counter() - t0)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                await _close(writer)
                writer = None
                continue
            statuses[status] = statuses.get(status, 0) + 1
            if 200 <= status < 300:
                for raw, name in wanted.items():
                    value = headers.get(raw)
                    if value is not None:
                        values[name].append(float(value))
            else:
                errors += 1
            if close:
                await _close(writer)
                writer = None
        await _close(writer)

    await asyncio.gather(*(user() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1e3 if latencies else np.asarray([np.nan])
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return RunResult(
        concurrency=concurrency,
        requests=len(latencies),
        ok=ok,
        errors=errors,
        wall_s=wall,
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        client_cpu_s=time.process_time() - cpu0,
        statuses=statuses,
        server_ms={name: float(np.mean(v)) for name, v in values.items() if v},
        server_p50_ms={name: float(np.percentile(v, 50)) for name, v in values.items() if v},
        server_p99_ms={name: float(np.percentile(v, 99)) for name, v in values.items() if v},
    )


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
