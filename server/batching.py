"""Micro-batching: concurrent queries share one ONNX run.

The shape is TEI's ``queue.rs`` + ``infer.rs``:
- admission is a non-blocking counter check; past ``max_queue`` queries the
  caller gets ``Overloaded`` (a 429) instead of joining an unbounded queue,
  which keeps the latency of accepted requests bounded under overload;
- one owner task packs waiting requests into a batch under a request cap and
  a padded-token budget (longest x count) and runs tokens -> embeddings in a
  dedicated thread, so the event loop never runs inference;
- requests whose caller went away (cancelled: client disconnect or deadline)
  or whose deadline passed are skipped before the batch runs;
- if a batch fails every waiter gets the error, the batcher turns unhealthy
  (readiness false) and the failure is logged with its traceback; the owner
  task itself never dies.

Heuristic for waiting: after the first request of a batch arrives the owner
waits up to ``max_wait`` for company, but only when the previous batch held
more than one request (i.e. there is concurrent traffic). A lone sequential
client therefore pays no batching delay at all, and under load requests pile
up while the previous batch runs, so the wait rarely matters there either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from tandem.models.encoder import Encoder, TokenBatch
from tandem.server.errors import DeadlineExceeded, EncoderFailure, NotReady, Overloaded
from tandem.server.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    """Vectors for one submitted request and what producing them cost."""

    vectors: npt.NDArray[np.float32]  # (n_texts, dim), L2-normalized
    queue_s: float
    embed_s: float
    batch_size: int
    native: npt.NDArray[np.float32] | None = None  # (n_texts, native dim): the same pass's


@dataclass(eq=False)
class _Item:
    tokens: TokenBatch
    deadline: float  # loop time
    future: asyncio.Future[Embedded]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def seq(self) -> int:
        return int(self.tokens.input_ids.shape[1])


class MicroBatcher:
    """Single owner of a bounded queue of tokenized queries."""

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
    ) -> None:
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.healthy = True
        self.last_error: str | None = None
        self._admitted = 0
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._last_batch_size = 1
        self._task: asyncio.Task[None] | None = None
        # One thread: ONNX Runtime already uses every core inside a run, and
        # two concurrent runs would only fight over them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-embed")

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            item = self._pending.popleft()
            self.metrics.queue_depth.dec(item.tokens.size)
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
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self._admitted += n
        self.metrics.in_flight.inc(n)
        try:
            yield
        finally:
            self._admitted -= n
            self.metrics.in_flight.dec(n)

    # -- submission --------------------------------------------------------
    async def embed(self, tokens: TokenBatch, deadline: float) -> Embedded:
        """Embed one request's texts (already tokenized) within the deadline (loop time)."""
        if self._task is None or self._task.done():
            raise NotReady("the batcher is not running")
        loop = asyncio.get_running_loop()
        item = _Item(tokens, deadline, loop.create_future())
        self._pending.append(item)
        self.metrics.queue_depth.inc(tokens.size)
        self._wakeup.set()
        try:
            async with asyncio.timeout_at(deadline):
                return await item.future
        except TimeoutError:
            self.metrics.rejected.labels(reason="deadline").inc()
            raise DeadlineExceeded(
                "deadline exceeded while waiting for the encoder",
                headers={"Retry-After": str(self.retry_after_s)},
            ) from None

    # -- owner task --------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take([])
            if batch and self._should_wait(batch):
                wait_until = batch[0].enqueued + self.max_wait_s
                while self._fits_more(batch) and (left := wait_until - time.perf_counter()) > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._wakeup.wait()
                    batch = self._take(batch)
            if not batch:
                continue
            await self._run_batch(loop, batch)

    def _should_wait(self, batch: list[_Item]) -> bool:
        return self.max_wait_s > 0 and self._last_batch_size > 1 and self._fits_more(batch)

    def _fits_more(self, batch: list[_Item]) -> bool:
        return sum(i.tokens.size for i in batch) < self.max_batch_size

    def _take(self, batch: list[_Item]) -> list[_Item]:
        """Move waiting items into batch while the request cap and token budget allow."""
        rows = sum(i.tokens.size for i in batch)
        seq = max((i.seq for i in batch), default=0)
        now = asyncio.get_running_loop().time()
        while self._pending:
            item = self._pending[0]
            if item.future.done() or item.deadline <= now:
                # The caller went away or gave up: do not spend a batch slot on it.
                self._pending.popleft()
                self.metrics.queue_depth.dec(item.tokens.size)
                continue
            new_rows = rows + item.tokens.size
            new_seq = max(seq, item.seq)
            # An item that alone exceeds the caps still runs, in a batch of its own.
            if batch and (
                new_rows > self.max_batch_size or new_rows * new_seq > self.max_batch_tokens
            ):
                break
            self._pending.popleft()
            self.metrics.queue_depth.dec(item.tokens.size)
            batch.append(item)
            rows, seq = new_rows, new_seq
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.perf_counter()
        merged = merge_token_batches([i.tokens for i in batch], self.encoder.pad_id)
        try:
            vectors, native, embed_s = await loop.run_in_executor(
                self._executor, self._forward, merged
            )
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(NotReady("server is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - the owner must survive any failure of a batch
            self.healthy = False
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.metrics.batch_failures.labels(cause=type(exc).__name__).inc()
            self.metrics.ready.set(0)
            logger.error("batch of %d queries failed", merged.size, exc_info=exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(EncoderFailure(f"the encoder failed: {exc}"))
            return
        if not self.healthy:
            logger.info("encoder recovered after: %s", self.last_error)
            self.metrics.ready.set(1)
        self.healthy = True
        self._last_batch_size = len(batch)
        self.metrics.batch_size.observe(merged.size)
        self.metrics.batch_tokens.observe(merged.padded_tokens)
        self.metrics.embed_seconds.observe(embed_s)
        row = 0
        for item in batch:
            n = item.tokens.size
            queue_s = started - item.enqueued
            self.metrics.queue_seconds.observe(queue_s)
            if not item.future.done():
                item.future.set_result(
                    Embedded(
                        vectors[row : row + n], queue_s, embed_s, len(batch), native[row : row + n]
                    )
                )
            row += n

    def _forward(
        self, batch: TokenBatch
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]:
        """One ONNX run: the served vectors and the student's native ones (fused mode)."""
        started = time.perf_counter()
        vectors, native = self.encoder.forward_both(batch)
        return vectors, native, time.perf_counter() - started


def merge_token_batches(parts: list[TokenBatch], pad_id: int) -> TokenBatch:
    """Stack tokenized requests into one batch padded to the longest of them."""
    if len(parts) == 1:
        return parts[0]
    rows = sum(p.size for p in parts)
    seq = max(int(p.input_ids.shape[1]) for p in parts)
    ids = np.full((rows, seq), pad_id, dtype=np.int64)
    mask = np.zeros((rows, seq), dtype=np.int64)
    row = 0
    for p in parts:
        n, s = p.input_ids.shape
        ids[row : row + n, :s] = p.input_ids
        mask[row : row + n, :s] = p.attention_mask
        row += n
    return TokenBatch(ids, mask, sum(p.n_truncated for p in parts))
