"""Micro-batching: concurrent requests share one ONNX run and one search stage.

The shape is TEI's ``queue.rs`` + ``infer.rs``:
- admission is a non-blocking counter check; past ``max_queue`` queries the
  caller gets ``Overloaded`` (a 429) instead of joining an unbounded queue,
  which keeps the latency of accepted requests bounded under overload;
- one owner task packs waiting requests into a batch under a request cap and
  a padded-token budget (longest x count); their token rows (tokenized once
  per request) are padded in one merge, and one worker thread runs the
  forward pass and then the stage that follows it (the service's search over
  the whole batch), so a request costs one thread hop, not one per stage;
- requests whose caller went away (cancelled: client disconnect or deadline)
  or whose deadline passed are skipped before the batch runs;
- if the forward pass fails every waiter gets the error, the batcher turns
  unhealthy (readiness false) and the failure is logged with its traceback;
  the owner task itself never dies. A stage failure fails only the requests
  it names.

Heuristics:
- after the first request of a batch arrives the owner waits up to
  ``max_wait`` for company, but only when the previous batch held more than
  one request (i.e. there is concurrent traffic). A lone sequential client
  pays no batching delay;
- a one-row request on a quiet server runs inline on the event loop: no
  wake-up of the owner task, no hop to the worker thread and back (measured
  with the int8 student: single-query ``/search`` server time 1.36-1.49 vs
  1.59-1.73 ms). Quiet means the HTTP layer counts no other request in
  flight and at most ``INLINE_MAX_CONNECTIONS`` open connections, nothing
  waits or runs here, and no request has had company for
  ``INLINE_QUIET_S``. The connection bound keeps many clients off the loop
  when their requests merely do not overlap yet: 400 clients ramping up at
  one request per second each ran 339 requests inline one after another,
  and the ramp's p99 doubled (140-160 vs 76 ms over the 40-s run). The
  request count must come from the HTTP layer, which sees
  requests parsed in the same poll before any of them runs (the batcher's
  own admission count cannot: inlining on it turned a burst into one-by-one
  runs, 611 vs 852 q/s at 32 clients); the quiet period keeps a lone moment
  inside concurrent traffic from stalling the loop (without it, 8 clients
  lost 8 %). Everything else runs in the worker thread;
- a row-by-row (int8) encoder spreads a batch's rows over its own lanes, so
  one batch still uses every core;
- a batch whose rows differ much in length runs as two length-sorted ONNX
  runs when that cuts the padded tokens by a quarter or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from tandem.models.encoder import Encoder, TokenRows
from tandem.server.errors import DeadlineExceeded, EncoderFailure, NotReady, Overloaded
from tandem.server.metrics import Metrics

from tandem.errors import TandemError

logger = logging.getLogger(__name__)

INLINE_QUIET_S = 0.1  # no request had company for this long: a lone one may run inline
# More open connections than this is many clients, even between their requests:
# a sequential client, a metrics scraper and a probe or two stay under it.
INLINE_MAX_CONNECTIONS = 4
SPLIT_MIN_ROWS = 8  # smaller batches always run as one ONNX run
SPLIT_GAIN = 0.75  # split when two runs cost at most this share of one run's padded tokens


@dataclass(frozen=True)
class Embedded:
    """Vectors (and stage output) for one submitted request, and what producing them cost."""

    vectors: npt.NDArray[np.float32]  # (n_texts, dim), L2-normalized
    queue_s: float
    embed_s: float
    batch_size: int
    output: Any = None  # what the stage returned for this request (None without a job)
    native: npt.NDArray[np.float32] | None = None  # (n_texts, native dim) from the same pass
    inline: bool = False  # ran on the event loop (a lone request), not in the worker thread


class StageRun(Protocol):
    """The work that follows the forward pass for one batch; runs in the worker thread.

    Called with each request's job (None for requests without one) and its
    vectors, served and native (one forward pass gives both); returns one
    output per request, or an exception for a request that failed. ``close``
    is always called once, after the call or instead of it when the forward
    pass failed.
    """

    def __call__(
        self,
        jobs: Sequence[Any],
        vectors: Sequence[npt.NDArray[np.float32]],
        native: Sequence[npt.NDArray[np.float32]],
    ) -> list[Any]: ...

    def close(self) -> None: ...


class Stage(Protocol):
    def open(self) -> StageRun:
        """Called on the event loop when a batch with jobs is formed (e.g. to lease a bundle)."""
        ...


@dataclass(eq=False)
class _Item:
    rows: TokenRows
    job: Any
    deadline: float  # loop time
    future: asyncio.Future[Embedded]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class _Ran:
    vectors: npt.NDArray[np.float32]
    embed_s: float
    outputs: list[Any]
    padded_tokens: int
    native: npt.NDArray[np.float32]


class MicroBatcher:
    """Single owner of a bounded queue of tokenized requests."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue: int,
        retry_after_s: int,
        metrics: Metrics,
        stage: Stage | None = None,
        thread_init: Callable[[], None] | None = None,
        inline_lone: bool = True,
    ) -> None:
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.stage = stage
        self.inline_lone = inline_lone
        self.healthy = True
        self.last_error: str | None = None
        self._admitted = 0
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._last_batch_size = 1
        self._task: asyncio.Task[None] | None = None
        self._crowded_at = -INLINE_QUIET_S  # last time another request was in flight
        self._running = False  # the owner holds a batch (forming it, or in the worker thread)
        self._thread_init = thread_init
        # One thread: ONNX Runtime already uses every core inside a run, and
        # two concurrent runs would only fight over them.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tandem-embed", initializer=thread_init
        )

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            if self._thread_init is not None:
                self._thread_init()  # the event loop's thread runs lone requests' stages too
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            self.metrics.queue_depth.dec(item.rows.size)
            if not item.future.done():
                item.future.set_exception(NotReady("server is shutting down"))
        self._executor.shutdown(wait=True)

    # -- admission ---------------------------------------------------------
    @property
    def admitted(self) -> int:
        return self._admitted

    @contextlib.contextmanager
    def admission(self, n: int) -> Iterator[None]:
        """Hold n of the ``max_queue`` slots for the whole request, or refuse at once."""
        if self._admitted + n > self.max_queue:
            self.metrics.rejected.labels(reason="overloaded").inc()
            raise Overloaded(
                f"server overloaded: {self._admitted} queries in flight (max {self.max_queue})",
                retry_after_s=self.retry_after_s,
            )
        self._admitted += n
        self.metrics.in_flight.inc(n)
        try:
            yield
        finally:
            self._admitted -= n
            self.metrics.in_flight.dec(n)

    # -- submission --------------------------------------------------------
    async def embed(
        self,
        rows: TokenRows,
        deadline: float,
        job: Any = None,
        *,
        in_flight: int | None = None,
        connections: int | None = None,
    ) -> Embedded:
        """Embed one request's rows (then run the stage on ``job``) within the deadline.

        ``in_flight``: the HTTP requests this process is answering, this one
        included; ``connections``: the connections it holds open (None:
        unknown). A request alone on a quiet server runs inline.
        """
        if self._task is None or self._task.done():
            raise NotReady("the batcher is not running")
        loop = asyncio.get_running_loop()
        item = _Item(rows, job, deadline, loop.create_future())
        if self._quiet_for(item, in_flight, connections):
            # The same deadline as a queued request's: none is run once past it,
            # and an answer that comes after it is refused.
            if loop.time() >= deadline:
                raise self._deadline_exceeded()
            self._run_inline(item)
            embedded = item.future.result()  # set above: a result or the batch's error
            if loop.time() > deadline:
                raise self._deadline_exceeded()
            return embedded
        self._pending.append(item)
        self.metrics.queue_depth.inc(rows.size)
        self._wakeup.set()
        try:
            async with asyncio.timeout_at(deadline):
                return await item.future
        except TimeoutError:
            raise self._deadline_exceeded() from None

    def _deadline_exceeded(self) -> DeadlineExceeded:
        self.metrics.rejected.labels(reason="deadline").inc()
        return DeadlineExceeded(
            "deadline exceeded while waiting for the encoder", retry_after_s=self.retry_after_s
        )

    # -- owner task --------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take([])
            self._running = bool(batch)  # from the first item taken: no inline run meanwhile
            if batch and self._should_wait(batch):
                wait_until = batch[0].enqueued + self.max_wait_s
                while self._fits_more(batch) and (left := wait_until - time.perf_counter()) > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._wakeup.wait()
                    batch = self._take(batch)
            if not batch:
                self._running = False
                continue
            await self._run_batch(loop, batch)

    def _quiet_for(self, item: _Item, in_flight: int | None, connections: int | None) -> bool:
        """One row, nothing queued or running, and no concurrent request for ``INLINE_QUIET_S``.

        The quiet period keeps a moment of lone traffic inside a busy stream
        from running inline (the loop would stall the requests behind it).
        """
        now = time.monotonic()
        if (
            (in_flight is not None and in_flight > 1)
            or (connections is not None and connections > INLINE_MAX_CONNECTIONS)
            or self._admitted > 1
        ):
            self._crowded_at = now
            return False
        return (
            self.inline_lone
            and in_flight == 1
            and item.rows.size == 1
            and not self._running
            and not self._pending
            and now - self._crowded_at >= INLINE_QUIET_S
        )

    def _run_inline(self, item: _Item) -> None:
        """Forward pass and stage on the event loop, for a lone one-row request."""
        started = time.perf_counter()
        batch = [item]
        stage = self._open_stage(batch)
        try:
            ran = self._work(batch, [item.job], stage)
        except Exception as exc:  # noqa: BLE001 - as a failed batch: the error goes to the caller
            self._fail(batch, exc)
            return
        self._deliver(batch, ran, started, inline=True)

    def _should_wait(self, batch: list[_Item]) -> bool:
        return self.max_wait_s > 0 and self._last_batch_size > 1 and self._fits_more(batch)

    def _fits_more(self, batch: list[_Item]) -> bool:
        return sum(i.rows.size for i in batch) < self.max_batch_size

    def _take(self, batch: list[_Item]) -> list[_Item]:
        """Move waiting items into batch while the request cap and token budget allow."""
        rows = sum(i.rows.size for i in batch)
        seq = max((i.rows.longest for i in batch), default=0)
        now = asyncio.get_running_loop().time()
        while self._pending:
            item = self._pending[0]
            if item.future.done() or item.deadline <= now:
                # The caller went away or gave up: do not spend a batch slot on it.
                self._pending.popleft()
                self.metrics.queue_depth.dec(item.rows.size)
                continue
            new_rows = rows + item.rows.size
            new_seq = max(seq, item.rows.longest)
            # An item that alone exceeds the caps still runs, in a batch of its own.
            if batch and (
                new_rows > self.max_batch_size or new_rows * new_seq > self.max_batch_tokens
            ):
                break
            self._pending.popleft()
            self.metrics.queue_depth.dec(item.rows.size)
            batch.append(item)
            rows, seq = new_rows, new_seq
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.perf_counter()
        stage = self._open_stage(batch)
        try:
            ran = await loop.run_in_executor(
                self._executor, self._work, batch, [i.job for i in batch], stage
            )
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(NotReady("server is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - the owner must survive any failure of a batch
            self._fail(batch, exc)
            return
        finally:
            self._running = False
        self._deliver(batch, ran, started, inline=False)

    def _open_stage(self, batch: list[_Item]) -> StageRun | None:
        has_jobs = any(i.job is not None for i in batch)
        return self.stage.open() if self.stage is not None and has_jobs else None

    def _fail(self, batch: list[_Item], exc: Exception) -> None:
        """The forward pass failed: every waiter gets the error; readiness turns false."""
        self.healthy = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.metrics.batch_failures.labels(cause=type(exc).__name__).inc()
        self.metrics.ready.set(0)
        logger.error("batch of %d queries failed", sum(i.rows.size for i in batch), exc_info=exc)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(EncoderFailure(f"the encoder failed: {exc}"))

    def _deliver(self, batch: list[_Item], ran: _Ran, started: float, *, inline: bool) -> None:
        """Each request's share of a batch that ran: vectors, stage output, timings."""
        if not self.healthy:
            logger.info("encoder recovered after: %s", self.last_error)
            self.metrics.ready.set(1)
        self.healthy = True
        self._last_batch_size = len(batch)
        self.metrics.batch_size.observe(sum(i.rows.size for i in batch))
        self.metrics.batch_tokens.observe(ran.padded_tokens)
        self.metrics.embed_seconds.observe(ran.embed_s)
        if inline:
            self.metrics.inline_runs.inc()
        row = 0
        for item, output in zip(batch, ran.outputs, strict=True):
            n = item.rows.size
            queue_s = started - item.enqueued
            self.metrics.queue_seconds.observe(queue_s)
            if not item.future.done():
                if isinstance(output, BaseException):
                    item.future.set_exception(output)
                else:
                    item.future.set_result(
                        Embedded(
                            ran.vectors[row : row + n],
                            queue_s,
                            ran.embed_s,
                            len(batch),
                            output,
                            ran.native[row : row + n],
                            inline,
                        )
                    )
            row += n

    def _work(self, batch: list[_Item], jobs: list[Any], stage: StageRun | None) -> _Ran:
        """Forward pass over every row of the batch, then the stage (worker thread)."""
        try:
            started = time.perf_counter()
            rows = [r for item in batch for r in item.rows.ids]
            vectors, native, padded = self._forward(rows)
            embed_s = time.perf_counter() - started
            outputs: list[Any] = [None] * len(batch)
            if stage is not None:
                bounds = np.cumsum([0] + [i.rows.size for i in batch])
                per_item = [vectors[bounds[j] : bounds[j + 1]] for j in range(len(batch))]
                per_native = [native[bounds[j] : bounds[j + 1]] for j in range(len(batch))]
                try:
                    outputs = stage(jobs, per_item, per_native)
                except TandemError as exc:
                    outputs = [exc] * len(batch)
            return _Ran(vectors, embed_s, outputs, padded, native)
        finally:
            if stage is not None:
                stage.close()

    def _forward(
        self, rows: list[npt.NDArray[np.int64]]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], int]:
        """One ONNX run over all rows, or two length-sorted runs when that saves padding.

        Each run yields the served vectors and the student's native ones (fused
        mode), and the tokens it ran, padding included.
        """
        lengths = [len(r) for r in rows]
        if self.encoder.row_by_row:
            # Each row runs alone and unpadded (int8): no padding to save, and a
            # second run is one more wait for the slower lane (measured: C=64
            # 958 vs 902 q/s with the split).
            merged = self.encoder.pad_rows(rows)
            vectors, native = self.encoder.forward_both(merged)
            return vectors, native, sum(lengths)
        groups = split_by_length(lengths)
        if len(groups) == 1:
            merged = self.encoder.pad_rows(rows)
            vectors, native = self.encoder.forward_both(merged)
            return vectors, native, merged.padded_tokens
        out = np.empty((len(rows), self.encoder.dim), dtype=np.float32)
        out_native = np.empty((len(rows), self.encoder.native_card.dim), dtype=np.float32)
        padded = 0
        for group in groups:
            merged = self.encoder.pad_rows([rows[i] for i in group])
            out[group], out_native[group] = self.encoder.forward_both(merged)
            padded += merged.padded_tokens
        return out, out_native, padded


def split_by_length(lengths: Sequence[int]) -> list[list[int]]:
    """Row indices in one group, or two length-sorted groups when padding drops enough.

    Padded cost is rows x longest; one long query among short ones makes every
    row pay its length, so the best single split point is tried.
    """
    n = len(lengths)
    if n < SPLIT_MIN_ROWS:
        return [list(range(n))]
    order = sorted(range(n), key=lambda i: lengths[i])
    ranked = [lengths[i] for i in order]
    one = n * ranked[-1]
    best, at = one, 0
    for i in range(1, n):
        cost = i * ranked[i - 1] + (n - i) * ranked[-1]
        if cost < best:
            best, at = cost, i
    if best > SPLIT_GAIN * one:
        return [list(range(n))]
    return [order[:at], order[at:]]
