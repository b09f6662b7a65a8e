"""Hot swap: load the bundle ``current`` points to, verify, warm, then swap.

Triggers: ``POST /admin/reload``, SIGHUP, and (optionally) ``current`` moving.
Loading happens in a thread while the old bundle keeps serving; the swap is
one reference assignment on the event loop, and the old bundle closes when
its last in-flight request returns its lease. A failed load changes nothing
but ``/info``'s ``reload.last_error``, a log line and a metric.

Several workers: every worker holds its own bundle, so a reload must reach
all of them. The CLI gives them a shared ``control_dir`` holding a reload
generation number; ``/admin/reload`` (answered by one worker) bumps it, and
every worker polls it and reloads when it changes. SIGHUP sent to the
supervisor is forwarded to every worker (see ``tandem.server.cli``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
from tandem.server.errors import ReloadFailed
from tandem.server.metrics import Metrics
from tandem.server.search import SearchService
from tandem.server.settings import ServerSettings
from tandem.server.state import LoadedBundle, load_bundle, resolve_version_dir, warm

logger = logging.getLogger(__name__)

GENERATION_FILE = "reload.generation"


@dataclass(frozen=True)
class ReloadOutcome:
    status: Literal["swapped", "unchanged"]
    version: str
    previous_version: str | None
    seconds: float


class Reloader:
    """Serializes reloads of one worker and records how the last one went."""

    def __init__(self, service: SearchService, settings: ServerSettings, metrics: Metrics) -> None:
        self.service = service
        self.settings = settings
        self.metrics = metrics
        self.last_attempt_at: float | None = None
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.reloads = 0
        self._task: asyncio.Task[ReloadOutcome] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._generation = self._read_generation()
        self._signal_installed = False
        self._failed_dir: Path | None = None
        self._watch_problem: str | None = None

    # -- triggers ------------------------------------------------------------
    def start(self) -> None:
        """Poll the control folder / ``current`` when configured; handle SIGHUP in this worker."""
        loop = asyncio.get_running_loop()
        if self.settings.control_dir is not None or self.settings.watch_current:
            self._watch = loop.create_task(self._watch_loop(), name="bundle-watch")
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
                self._signal_installed = True

    async def stop(self) -> None:
        if self._signal_installed:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in (self._watch, self._task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ReloadFailed):
                    await task

    def _on_sighup(self) -> None:
        logger.info("SIGHUP: reloading the bundle")
        self.reload_in_background()

    def reload_in_background(self, force: bool = False) -> None:
        task = self._start(force)
        task.add_done_callback(_consume)

    def broadcast(self) -> None:
        """Ask every worker sharing control_dir to reload (this one reloads directly)."""
        folder = self.settings.control_dir
        if folder is None:
            return
        generation = self._read_generation() + 1
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".gen.")
        with os.fdopen(fd, "w") as f:
            f.write(f"{generation}\n")
        os.replace(tmp, folder / GENERATION_FILE)
        self._generation = generation

    def _read_generation(self) -> int:
        folder = self.settings.control_dir
        if folder is None:
            return 0
        try:
            return int((folder / GENERATION_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_poll_s)
            generation = self._read_generation()
            moved = False
            bundle = self.settings.bundle  # None with a remote index tier: nothing to watch
            if self.settings.watch_current and bundle is not None:
                try:
                    target = await asyncio.to_thread(resolve_version_dir, bundle)
                except Exception as exc:  # noqa: BLE001 - a bad pointer must not stop the watcher
                    problem = str(exc)
                    if problem != self._watch_problem:  # log a broken pointer once, not every poll
                        logger.warning("cannot follow %s/current: %s", self.settings.bundle, exc)
                    self._watch_problem = problem
                else:
                    self._watch_problem = None
                    # A version that failed to load is not retried until `current` moves again.
                    moved = target not in (self.service.loaded.version_dir, self._failed_dir)
            if generation != self._generation or moved:
                self._generation = generation
                running = self._task
                if running is not None and not running.done():
                    # It may have resolved `current` before the new request: run again after it.
                    with contextlib.suppress(ReloadFailed):
                        await running
                with contextlib.suppress(ReloadFailed):
                    await self._start(force=False)

    # -- the reload itself ---------------------------------------------------
    async def reload(self, force: bool = False) -> ReloadOutcome:
        """Reload now (joining one already running); raises ReloadFailed if it fails."""
        return await asyncio.shield(self._start(force))

    def _busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def _start(self, force: bool) -> asyncio.Task[ReloadOutcome]:
        task = self._task
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._reload(force), name="reload")
            self._task = task
        return task

    async def _reload(self, force: bool) -> ReloadOutcome:
        started = time.perf_counter()
        self.last_attempt_at = time.time()
        old = self.service.loaded
        version_dir: Path | None = None
        if self.settings.backend == "milvus":
            return await self._follow_milvus(old, started)
        try:
            assert self.settings.bundle is not None  # the settings require it for faiss
            version_dir = await asyncio.to_thread(resolve_version_dir, self.settings.bundle)
            if not force and version_dir == old.version_dir:
                self.metrics.reloads.labels(outcome="unchanged").inc()
                return ReloadOutcome(
                    "unchanged", old.version, old.version, time.perf_counter() - started
                )
            new = await asyncio.to_thread(self._load, version_dir)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old bundle serving
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.last_error_at = time.time()
            self._failed_dir = version_dir
            self.metrics.reloads.labels(outcome="failed").inc()
            logger.error("reload failed; still serving %s", old.version, exc_info=exc)
            raise ReloadFailed(f"reload failed, still serving {old.version}: {exc}") from exc
        self.service.swap(new)
        self.reloads += 1
        self.last_success_at = time.time()
        self.last_error = None
        self.metrics.reloads.labels(outcome="swapped").inc()
        seconds = time.perf_counter() - started
        logger.info("swapped bundle %s -> %s in %.2fs", old.version, new.version, seconds)
        return ReloadOutcome("swapped", new.version, old.version, seconds)

    async def _follow_milvus(self, loaded: LoadedBundle, started: float) -> ReloadOutcome:
        """Milvus: versions move with the alias (or pointer); re-resolve it now."""
        before = loaded.version
        if not await asyncio.to_thread(loaded.backend.ping):
            self.metrics.reloads.labels(outcome="failed").inc()
            raise ReloadFailed(f"Milvus does not answer; still serving {before}")
        status: Literal["swapped", "unchanged"] = (
            "swapped" if loaded.version != before else "unchanged"
        )
        self.metrics.reloads.labels(outcome=status).inc()
        return ReloadOutcome(status, loaded.version, before, time.perf_counter() - started)

    def _load(self, version_dir: Path) -> LoadedBundle:
        faiss.omp_set_num_threads(self.settings.faiss_threads)  # warm-up searches in this thread
        loaded = load_bundle(
            version_dir,
            self.service.encoder.card,
            self.settings.variant,
            allow_unaligned=self.settings.allow_unaligned,
            verify=True,
            faiss_device=self.settings.faiss_device,
        )
        try:
            warm(loaded, self.service.warm_queries)
        except BaseException:
            loaded.retire()
            raise
        return loaded

    def info(self) -> dict[str, Any]:
        return {
            "in_progress": self._busy(),
            "reloads": self.reloads,
            "last_attempt_at": self.last_attempt_at,
            "last_success_at": self.last_success_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "generation": self._generation,
        }


def _consume(task: asyncio.Task[ReloadOutcome]) -> None:
    """Background reloads report through logs and /info; keep asyncio from warning."""
    if not task.cancelled():
        task.exception()
