"""Hot swap in-process: leases keep an old bundle open, the watcher follows `current`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from tandem.bundle.search import SearchPlan, search
from tandem.indexer.build import build_bundle
from tandem.models.encoder import Encoder
from tandem.server.app import create_app
from tandem.server.domain import SearchOptions
from tandem.server.hotswap import Reloader
from tandem.server.search import SearchService, with_documents
from tandem.server.settings import ServerSettings
from tandem.server.state import load_bundle, resolve_version_dir

from tests.support.server import QUERIES, publish_broken, sample_docs

pytestmark = pytest.mark.anyio
VARIANTS = ["f32-768", "bin-768"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def publish(root: Path, teacher: Encoder, n_docs: int) -> Path:
    return build_bundle(sample_docs(n_docs), root, teacher, VARIANTS)


def test_a_leased_bundle_stays_open_until_released(
    tmp_path: Path, teacher: Encoder, query_encoder: Encoder
) -> None:
    root = tmp_path / "bundle"
    publish(root, teacher, 10)
    state = load_bundle(
        resolve_version_dir(root),
        query_encoder.card,
        [],
        allow_unaligned=False,
        verify=True,
        faiss_device="cpu",
    )
    plan = SearchPlan(
        "bin-768", k=3, rescore=True, oversample=2, ef_search=16, filter=None, filter_exact_max=0
    )
    queries = query_encoder.encode(QUERIES[:1], "query")
    state.acquire()  # a request in flight
    state.retire()  # swapped out meanwhile
    found = with_documents(state, search(state.target, queries, plan))
    assert len(found.hits[0]) == 3  # still fully usable
    state.release()
    assert state._closed


@contextlib.asynccontextmanager
async def started(settings: ServerSettings) -> AsyncIterator[tuple[SearchService, Reloader]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"):
            yield app.state.service, app.state.reloader


async def eventually(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(300):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_watch_current_follows_new_versions_and_skips_broken_ones(
    tmp_path: Path, teacher: Encoder, query_encoder_dir: Path
) -> None:
    root = tmp_path / "bundle"
    await anyio.to_thread.run_sync(publish, root, teacher, 20)
    settings = ServerSettings(
        bundle=root,
        student=str(query_encoder_dir),
        watch_current=True,
        reload_poll_s=0.05,
        faiss_device="cpu",
    )
    async with started(settings) as (service, reloader):
        old = service.loaded
        await anyio.to_thread.run_sync(publish, root, teacher, 25)
        await eventually(lambda: service.loaded.version == "v0002", "the watcher to swap")
        assert service.loaded.n_docs == 25 and old._closed
        results = await service.search(QUERIES[:2], SearchOptions(k=30))
        assert all(len(r.hits) == 25 for r in results)

        # A version that fails to load is reported once and not retried in a loop.
        await anyio.to_thread.run_sync(publish_broken, root)
        await eventually(lambda: reloader.last_error is not None, "the failure to be reported")
        await asyncio.sleep(0.5)  # ten more polls
        labels = {"outcome": "failed"}
        assert service.metrics.registry.get_sample_value("tandem_reloads_total", labels) == 1
        assert service.loaded.version == "v0002"
        assert (await service.search(QUERIES[:1], SearchOptions(k=3)))[0].hits

        # A dangling pointer is logged, not fatal.
        (root / "current").unlink()
        (root / "current").symlink_to(root / "versions" / "missing")
        await asyncio.sleep(0.2)
        assert service.loaded.version == "v0002" and reloader.info()["in_progress"] is False
