"""Retry on 429 against a real server with a tiny admission bound.

``--max-queue 1`` admits one query at a time, so of a burst of concurrent
searches all but one are refused with 429 and ``Retry-After: 1``. (The
server's ``--max-wait-ms`` is left alone: it only delays queries once a
previous batch held several requests, which an admission bound of one never
allows.) The client must retry every refusal no sooner than ``Retry-After``
and answer every call; a burst is repeated until the server has refused at
least once, so the test does not depend on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tandem.client import (
    AsyncTandemClient,
    RetryPolicy,
    SearchResponse,
    ServiceUnavailableError,
    TandemClient,
)
from tests.client.conftest import serve_args
from tests.support.server import API_KEY, QUERIES, ServerProcess, running_server

pytestmark = pytest.mark.slow
RETRY_AFTER_S = 1
BURST = 6
MAX_BURSTS = 10
# Enough retries for every member of a burst to get its turn: each is spread over the jitter.
POLICY = RetryPolicy(max_retries=10, backoff_s=0.4, max_backoff_s=2.0)


@pytest.fixture(scope="module")
def tiny_queue_server(
    tmp_path_factory: pytest.TempPathFactory, client_bundle: Path, aligned_student_dir: Path
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("tiny-queue")
    args = serve_args(
        client_bundle,
        aligned_student_dir,
        "--max-queue",
        "1",
        "--retry-after-s",
        str(RETRY_AFTER_S),
    )
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}) as proc:
        yield proc


@pytest.fixture(scope="module")
def deadline_server(
    tmp_path_factory: pytest.TempPathFactory, client_bundle: Path, aligned_student_dir: Path
) -> Iterator[ServerProcess]:
    """Every search misses a one-microsecond deadline: 503 deadline_exceeded, Retry-After: 0."""
    tmp = tmp_path_factory.mktemp("deadline")
    extra = ("--request-timeout-s", "0.000001", "--retry-after-s", "0")
    args = serve_args(client_bundle, aligned_student_dir, *extra)
    with running_server(tmp, args, {"TANDEM_API_KEY": API_KEY}) as proc:
        yield proc


class Log:
    """Every request and response the client sent or got, with its task and time."""

    def __init__(self) -> None:
        self.events: list[tuple[object, str, float, int]] = []
        self.lock = threading.Lock()

    def add(self, who: object, kind: str, status: int = 0) -> None:
        with self.lock:
            self.events.append((who, kind, time.monotonic(), status))

    def statuses(self) -> list[int]:
        return [status for _, kind, _, status in self.events if kind == "response"]

    def waits_after_429(self) -> list[float]:
        """Seconds between each 429 and the same caller's next request."""
        waits = []
        for i, (who, kind, at, status) in enumerate(self.events):
            if kind == "response" and status == 429:
                later = [t for w, k, t, _ in self.events[i + 1 :] if w == who and k == "request"]
                assert later, "a 429 was not retried"
                waits.append(later[0] - at)
        return waits


def check(log: Log, responses: list[SearchResponse], retries: int) -> None:
    statuses = log.statuses()
    assert all(len(r.results) == 3 for r in responses)
    refused = statuses.count(429)
    assert refused >= 1, f"the server never refused in {MAX_BURSTS} bursts: {statuses}"
    assert set(statuses) <= {200, 429}, statuses
    assert retries == refused  # every refusal was retried, and nothing else was
    assert statuses.count(200) == len(responses)
    assert min(log.waits_after_429()) >= RETRY_AFTER_S


def test_sync_client_retries_429_from_concurrent_threads(tiny_queue_server: ServerProcess) -> None:
    log = Log()
    http = httpx.Client(
        event_hooks={
            "request": [lambda request: log.add(threading.get_ident(), "request")],
            "response": [
                lambda response: log.add(threading.get_ident(), "response", response.status_code)
            ],
        }
    )
    responses: list[SearchResponse] = []
    errors: list[BaseException] = []
    with (
        http,
        TandemClient(
            tiny_queue_server.url, api_key=API_KEY, retry=POLICY, http_client=http
        ) as client,
    ):
        for _ in range(MAX_BURSTS):
            gate = threading.Barrier(BURST)

            def one(i: int, gate: threading.Barrier) -> None:
                gate.wait()
                try:
                    found = client.search(QUERIES[i % len(QUERIES)], k=3)
                except BaseException as exc:  # collected and re-raised by the test
                    errors.append(exc)
                else:
                    with log.lock:
                        responses.append(found)

            threads = [threading.Thread(target=one, args=(i, gate)) for i in range(BURST)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert not errors, errors
            if 429 in log.statuses():
                break
        check(log, responses, client.retries)


@pytest.mark.anyio
async def test_async_client_retries_429_from_concurrent_tasks(
    tiny_queue_server: ServerProcess,
) -> None:
    log = Log()

    async def on_request(request: httpx.Request) -> None:
        log.add(asyncio.current_task(), "request")

    async def on_response(response: httpx.Response) -> None:
        log.add(asyncio.current_task(), "response", response.status_code)

    http = httpx.AsyncClient(event_hooks={"request": [on_request], "response": [on_response]})
    responses: list[SearchResponse] = []
    async with (
        http,
        AsyncTandemClient(
            tiny_queue_server.url, api_key=API_KEY, retry=POLICY, http_client=http
        ) as client,
    ):
        for _ in range(MAX_BURSTS):
            burst = [client.search(QUERIES[i % len(QUERIES)], k=3) for i in range(BURST)]
            responses += await asyncio.gather(*burst)
            if 429 in log.statuses():
                break
        check(log, responses, client.retries)


def test_503_is_retried_then_raised_with_the_servers_type(deadline_server: ServerProcess) -> None:
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    policy = RetryPolicy(max_retries=2, backoff_s=0.05)
    with (
        http,
        TandemClient(
            deadline_server.url, api_key=API_KEY, retry=policy, http_client=http
        ) as client,
    ):
        with pytest.raises(ServiceUnavailableError) as caught:
            client.search(QUERIES[0])
        assert client.retries == 2
    assert statuses == [503, 503, 503]
    error = caught.value
    assert error.type == "deadline_exceeded" and "deadline" in error.message
    assert error.retry_after == 0
