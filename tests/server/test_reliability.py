"""Overload, hot swap under load, several workers: real server processes."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tandem.indexer.build import build_bundle
from tandem.models.encoder import Encoder

from tests.support.server import (
    API_KEY,
    QUERIES,
    metric,
    publish_broken,
    running_server,
    sample_docs,
    scrape,
)

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SWAP_VARIANTS = ["f32-768", "bin-768"]


def publish(root: Path, teacher: Encoder, n_docs: int) -> Path:
    """A new version under root (teacher vectors come from the embedding cache)."""
    return build_bundle(sample_docs(n_docs), root, teacher, SWAP_VARIANTS)


def wait_for(predicate, what: str, tries: int = 150, pause: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    for _ in range(tries):
        if predicate():
            return
        time.sleep(pause)
    raise AssertionError(f"timed out waiting for {what}")


def test_burst_beyond_the_queue_gets_429(
    tmp_path: Path, bundle_root: Path, query_encoder_dir: Path
) -> None:
    args = [
        "--bundle",
        str(bundle_root),
        "--student",
        str(query_encoder_dir),
        "--max-queue",
        "2",
        "--max-batch-size",
        "1",
        "--variant",
        "bin-768",
    ]
    with running_server(tmp_path, args) as server:
        # Deterministic: one request asking for more slots than exist.
        response = httpx.post(f"{server.url}/search/batch", json={"queries": ["a", "b", "c"]})
        assert response.status_code == 429 and response.json()["type"] == "overloaded"

        start = threading.Barrier(32)

        def user(i: int) -> list[httpx.Response]:
            # Connected first, then all at once: the server sees 32 requests in one
            # poll, not a trickle it could answer one by one. Long queries: each
            # costs the server more than a client needs to send one.
            with httpx.Client(base_url=server.url, timeout=60) as client:
                client.get("/healthz")
                start.wait()
                return [
                    client.post(
                        "/search",
                        json={"query": " ".join([QUERIES[(i + j) % len(QUERIES)]] * 30), "k": 5},
                    )
                    for j in range(3)
                ]

        with ThreadPoolExecutor(32) as pool:
            responses = [r for rs in pool.map(user, range(32)) for r in rs]
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[429] > 0 and statuses[200] > 0, statuses
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and r.json()["type"] == "overloaded"
        # Still healthy afterwards, and the refusals are counted.
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        samples = scrape(server.url)
        assert metric(samples, "tandem_rejected_total", reason="overloaded") == statuses[429] + 1
        assert (
            metric(samples, "tandem_requests_total", route="/search", status="429") == statuses[429]
        )


class Load:
    """Searches from a few threads until stopped (bounded), recording every status."""

    def __init__(self, url: str, threads: int = 3, limit: int = 400) -> None:
        self.url, self.limit = url, limit
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]

    def run(self, seed: int) -> None:
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=60) as client:
            for i in range(self.limit):
                if self.stop.is_set():
                    return
                variant = SWAP_VARIANTS[(seed + i) % 2]
                query = {"query": QUERIES[(seed + i) % len(QUERIES)], "k": 5, "variant": variant}
                try:
                    response = client.post("/search", json=query)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors.append(repr(exc))
                    continue
                with self.lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code != 200:
                        self.errors.append(response.text)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def test_reload_under_load_drops_nothing(
    tmp_path: Path, teacher: Encoder, query_encoder_dir: Path
) -> None:
    root = tmp_path / "bundle"
    publish(root, teacher, 30)
    args = ["--bundle", str(root), "--student", str(query_encoder_dir)]
    with running_server(tmp_path, args, {"TANDEM_API_KEY": API_KEY}) as server:
        client = httpx.Client(base_url=server.url, headers=AUTH, timeout=60)

        def info() -> dict:  # type: ignore[type-arg]
            return client.get("/info").json()

        with Load(server.url) as load:
            publish(root, teacher, 40)
            response = client.post("/admin/reload", params={"wait": "true"})
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "swapped" and response.json()["version"] == "v0002"
            assert info()["bundle"]["n_docs"] == 40

            publish(root, teacher, 35)
            server.signal(signal.SIGHUP)
            wait_for(lambda: info()["bundle"]["version"] == "v0003", "SIGHUP reload")

            publish_broken(root)
            response = client.post("/admin/reload", params={"wait": "true"})
            assert response.status_code == 409 and response.json()["type"] == "reload_failed"
            state = info()
            assert state["bundle"]["version"] == "v0003"
            assert "verification" in state["reload"]["last_error"]
            served_before = sum(load.statuses.values())
            wait_for(lambda: sum(load.statuses.values()) > served_before + 10, "more searches")
        assert load.errors == [] and set(load.statuses) == {200}, (load.statuses, load.errors[:3])
        assert sum(load.statuses.values()) > 20
        samples = scrape(server.url)
        assert metric(samples, "tandem_reloads_total", outcome="swapped") == 2
        assert metric(samples, "tandem_reloads_total", outcome="failed") == 1
        assert "reload failed" in server.logs()
        client.close()


def test_several_workers_share_metrics_and_reloads(
    tmp_path: Path, teacher: Encoder, query_encoder_dir: Path
) -> None:
    root = tmp_path / "bundle"
    publish(root, teacher, 30)
    args = ["--bundle", str(root), "--student", str(query_encoder_dir), "--workers", "2"]
    env = {"TANDEM_API_KEY": API_KEY}
    with running_server(tmp_path, args, env) as server:
        wait_for(lambda: metric(scrape(server.url), "tandem_ready") == 1, "both workers")
        n = 20
        for i in range(n):  # a fresh connection each: the kernel spreads them over workers
            query = {"query": QUERIES[i % len(QUERIES)], "k": 3}
            assert httpx.post(f"{server.url}/search", json=query, headers=AUTH).status_code == 200
        samples = scrape(server.url)
        assert metric(samples, "tandem_requests_total", route="/search", status="200") == n
        assert metric(samples, "tandem_batch_size_sum") >= n

        publish(root, teacher, 40)
        response = httpx.post(f"{server.url}/admin/reload", params={"wait": "true"}, headers=AUTH)
        assert response.status_code == 200 and response.json()["status"] == "swapped", response.text

        def swapped() -> float:
            return metric(scrape(server.url), "tandem_reloads_total", outcome="swapped")

        wait_for(lambda: swapped() == 2, "every worker to reload")  # one per worker
        publish(root, teacher, 35)
        server.signal(signal.SIGHUP)  # to the supervisor, forwarded to each worker
        wait_for(lambda: swapped() == 4, "every worker to reload on SIGHUP")
        versions = {
            httpx.get(f"{server.url}/info", headers=AUTH).json()["bundle"]["version"]
            for _ in range(10)
        }
        assert versions == {"v0003"}
