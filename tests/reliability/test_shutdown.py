"""SIGTERM under load: requests already admitted finish with 200, new connections are refused.

uvicorn stops listening at once, waits for open requests (up to
``request_timeout_s + 1`` s, as ``tandem serve`` configures it), then runs
the app's shutdown (batcher, search threads, bundle). Having handled the
signal it re-raises it, so the parent sees the process ended by SIGTERM
after a complete shutdown, the convention process supervisors expect.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.server import QUERIES, metric, running_server, scrape

pytestmark = pytest.mark.slow
REQUESTS = 4
QUERIES_PER_REQUEST = 16


def test_sigterm_lets_in_flight_requests_complete(
    tmp_path: Path, reliability_bundle: Path, student_arg: str
) -> None:
    args = [
        "--bundle", str(reliability_bundle), "--student", student_arg,
        "--max-queue", "1024", "--request-timeout-s", "60",
    ]  # fmt: skip
    # ~200 tokens each: tens of ms of student time per request even on a fast
    # machine with the int8 student, so the scrape below sees all of them admitted.
    texts = [" ".join([QUERIES[i % len(QUERIES)]] * 24) for i in range(QUERIES_PER_REQUEST)]
    with running_server(tmp_path, args, name="sigterm") as server:
        assert server.proc is not None

        def search() -> httpx.Response:
            return httpx.post(
                f"{server.url}/search/batch", json={"queries": texts, "k": 5}, timeout=120
            )

        with ThreadPoolExecutor(REQUESTS) as pool:
            futures = [pool.submit(search) for _ in range(REQUESTS)]
            deadline = time.monotonic() + 60
            while metric(scrape(server.url), "tandem_in_flight") < REQUESTS * QUERIES_PER_REQUEST:
                assert time.monotonic() < deadline, "the requests were never all admitted"
                time.sleep(0.01)
            server.signal(signal.SIGTERM)  # every request admitted, none answered yet
            signalled = time.monotonic()

            refused = False
            while not refused and time.monotonic() < signalled + 10:
                try:
                    httpx.get(f"{server.url}/healthz", timeout=2)
                    time.sleep(0.02)
                except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                    # Refused, or accepted just before the listener closed and then
                    # closed unanswered by the shutdown (a FIN, or a reset when the
                    # request was still unread in the socket): either way, not served.
                    refused = True
            assert refused, "new connections were still accepted after SIGTERM"
            responses = [f.result() for f in futures]

        for response in responses:
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert len(results) == QUERIES_PER_REQUEST
            assert all(len(r["results"]) == 5 for r in results)
        code = server.proc.wait(timeout=90)
        drained = time.monotonic() - signalled
        log = server.log.read_text(errors="replace")
        assert code == -signal.SIGTERM, log[-2000:]
        assert "closed bundle version" in log and "Application shutdown complete" in log
        assert "Finished server process" in log
        assert "Traceback" not in log and "ERROR" not in log
        n = REQUESTS * QUERIES_PER_REQUEST
        print(f"SIGTERM: {REQUESTS} requests ({n} queries) all 200; exit {code} in {drained:.1f}s")
