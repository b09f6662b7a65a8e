"""The micro-batcher with the real student: coalescing, admission, deadlines, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from tandem.models.encoder import Encoder, TokenRows
from tandem.server.batching import (
    INLINE_MAX_CONNECTIONS,
    INLINE_QUIET_S,
    MicroBatcher,
    split_by_length,
)
from tandem.server.errors import DeadlineExceeded, EncoderFailure, Overloaded
from tandem.server.metrics import Metrics
from tandem.server.settings import ServerSettings

TEXTS = [
    "a short query",
    "a much longer query about the history of vaccination and smallpox eradication",
    "glaciers",
    "what is the boiling point of water at high altitude",
]
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(encoder: Encoder, **overrides: float) -> MicroBatcher:
    options: dict[str, float] = {
        "max_batch_size": 32,
        "max_batch_tokens": 8192,
        "max_wait_s": 0.002,
        "max_queue": 64,
        "retry_after_s": 1,
    }
    options.update(overrides)
    return MicroBatcher(encoder, metrics=Metrics(), **options)  # type: ignore[arg-type]


@pytest.fixture
async def batcher(student: Encoder) -> AsyncIterator[MicroBatcher]:
    b = make(student)
    b.start()
    yield b
    await b.stop()


def tokens(encoder: Encoder, text: str) -> TokenRows:
    return encoder.tokenize_rows([text], "query")


def deadline(seconds: float = 30.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def batches_run(b: MicroBatcher) -> float:
    return b.metrics.registry.get_sample_value("tandem_batch_size_count") or 0.0


async def test_concurrent_queries_share_one_run_and_match_solo_encoding(
    batcher: MicroBatcher, student: Encoder
) -> None:
    results = await asyncio.gather(*(batcher.embed(tokens(student, t), deadline()) for t in TEXTS))
    assert [r.batch_size for r in results] == [len(TEXTS)] * len(TEXTS)
    assert batches_run(batcher) == 1
    solo = student.encode(TEXTS, "query")  # each padded differently from the shared batch
    for result, expected in zip(results, solo, strict=True):
        np.testing.assert_allclose(result.vectors[0], expected, atol=1e-5)


async def test_a_lone_query_does_not_wait_for_company(student: Encoder) -> None:
    """With a 60 s max wait, a lone query still returns at once (no traffic, no waiting)."""
    b = make(student, max_wait_s=60.0)
    b.start()
    try:
        result = await asyncio.wait_for(b.embed(tokens(student, "alone"), deadline()), timeout=20)
        assert result.batch_size == 1
    finally:
        await b.stop()


async def test_token_budget_splits_batches(student: Encoder) -> None:
    b = make(student, max_batch_tokens=32)
    b.start()
    try:
        parts = [tokens(student, t) for t in TEXTS]
        results = await asyncio.gather(*(b.embed(p, deadline()) for p in parts))
        # The longest query alone has > 16 tokens: it cannot share a 32-token run with 3 others.
        assert all(r.batch_size < len(TEXTS) for r in results)
        assert batches_run(b) > 1
    finally:
        await b.stop()


async def test_admission_refuses_beyond_the_bound(student: Encoder) -> None:
    b = make(student, max_queue=3)
    with b.admission(2):
        with pytest.raises(Overloaded) as refused:
            with b.admission(2):
                pass
        assert refused.value.retry_after_s == 1
        with b.admission(1):
            assert b.admitted == 3
    assert b.admitted == 0
    assert (
        b.metrics.registry.get_sample_value("tandem_rejected_total", {"reason": "overloaded"}) == 1
    )


async def test_expired_and_cancelled_requests_are_skipped(
    batcher: MicroBatcher, student: Encoder
) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(DeadlineExceeded):
        await batcher.embed(tokens(student, "too late"), loop.time() - 1)
    task = asyncio.create_task(batcher.embed(tokens(student, "gone"), deadline()))
    await asyncio.sleep(0)  # enqueued, batch not yet run
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await batcher.embed(tokens(student, "still here"), deadline())
    assert result.batch_size == 1
    assert batches_run(batcher) == 1  # neither the expired nor the cancelled query ran


async def test_a_failed_batch_fails_every_waiter_and_then_recovers(
    batcher: MicroBatcher, student: Encoder
) -> None:
    good = tokens(student, "fine")
    bad = TokenRows([np.full(4, 10**9, dtype=np.int64)], [False])
    outcomes = await asyncio.gather(
        batcher.embed(good, deadline()), batcher.embed(bad, deadline()), return_exceptions=True
    )
    assert all(isinstance(o, EncoderFailure) for o in outcomes), outcomes
    assert not batcher.healthy and batcher.last_error
    labels = {"cause": "EncoderError"}
    assert batcher.metrics.registry.get_sample_value("tandem_batch_failures_total", labels) == 1
    await batcher.embed(good, deadline())
    assert batcher.healthy


def test_rows_are_padded_once_to_the_longest(student: Encoder) -> None:
    rows = student.tokenize_rows(TEXTS, "query")
    merged = student.pad_rows(rows.ids)
    assert merged.size == len(TEXTS)
    assert merged.input_ids.shape[1] == rows.longest == max(len(r) for r in rows.ids)
    for row, ids in enumerate(rows.ids):
        assert (merged.input_ids[row, : len(ids)] == ids).all()
        assert merged.attention_mask[row, len(ids) :].sum() == 0
    # Padding does not change a row's embedding (the mask hides it).
    np.testing.assert_allclose(student.forward(merged), student.encode(TEXTS, "query"), atol=1e-5)


def test_truncation_is_flagged_per_row(student: Encoder) -> None:
    long = "word " * (student.card.max_length * 2)
    rows = student.tokenize_rows(["short", long, "also short"], "query")
    assert rows.truncated == [False, True, False]
    assert len(rows.ids[1]) == student.card.max_length


def test_split_by_length_separates_a_long_row_only_when_it_pays() -> None:
    assert split_by_length([5, 6, 5, 7]) == [[0, 1, 2, 3]]  # few rows: one run
    assert split_by_length([8] * 10) == [list(range(10))]  # equal rows: one run
    groups = split_by_length([8] * 15 + [200])
    assert groups == [list(range(15)), [15]]


async def test_mixed_lengths_embed_as_they_do_alone(student: Encoder) -> None:
    """A batch split into two length-sorted runs returns each row in its place."""
    texts = [f"query number {i}" for i in range(12)] + ["a long one " * 40]
    b = make(student)
    b.start()
    try:
        results = await asyncio.gather(*(b.embed(tokens(student, t), deadline()) for t in texts))
    finally:
        await b.stop()
    solo = student.encode(texts, "query")
    for result, expected in zip(results, solo, strict=True):
        np.testing.assert_allclose(result.vectors[0], expected, atol=1e-5)


async def test_int8_rows_run_unpadded_in_one_pass(query_encoder_dir: Path) -> None:
    """A mix that fp32 would split in two runs: int8 rows run alone, so no split, no padding."""
    int8 = Encoder(query_encoder_dir, precision="int8", device="cpu")
    texts = [f"query number {i}" + " and more" * (i % 4) for i in range(12)]
    texts.append("a long one " * 40)
    rows = [tokens(int8, t) for t in texts]
    lengths = [len(r.ids[0]) for r in rows]
    assert len(split_by_length(lengths)) == 2
    b = make(int8)
    b.start()
    try:
        results = await asyncio.gather(*(b.embed(r, deadline()) for r in rows))
    finally:
        await b.stop()
    registry = b.metrics.registry
    assert registry.get_sample_value("tandem_batch_tokens_sum") == sum(lengths)
    for result, text in zip(results, texts, strict=True):
        np.testing.assert_allclose(result.vectors[0], int8.encode([text], "query")[0], atol=1e-6)


async def test_a_lone_query_on_a_quiet_server_runs_inline_as_the_thread_would(
    batcher: MicroBatcher, student: Encoder
) -> None:
    threaded = await batcher.embed(tokens(student, TEXTS[1]), deadline())  # count unknown
    inline = await batcher.embed(tokens(student, TEXTS[1]), deadline(), in_flight=1)
    assert not threaded.inline and inline.inline and inline.queue_s < threaded.queue_s + 1e-3
    np.testing.assert_array_equal(inline.vectors, threaded.vectors)
    assert batcher.metrics.registry.get_sample_value("tandem_inline_runs_total") == 1
    assert batches_run(batcher) == 2


async def test_company_keeps_queries_off_the_loop_for_the_quiet_period(
    batcher: MicroBatcher, student: Encoder
) -> None:
    crowded = await batcher.embed(tokens(student, "busy"), deadline(), in_flight=3)
    right_after = await batcher.embed(tokens(student, "alone now"), deadline(), in_flight=1)
    assert not crowded.inline and not right_after.inline
    await asyncio.sleep(INLINE_QUIET_S * 1.5)
    later = await batcher.embed(tokens(student, "alone now"), deadline(), in_flight=1)
    assert later.inline
    np.testing.assert_array_equal(later.vectors, right_after.vectors)
    two_rows = student.tokenize_rows(TEXTS[:2], "query")
    assert not (await batcher.embed(two_rows, deadline(), in_flight=1)).inline


async def test_many_open_connections_keep_queries_off_the_loop(
    batcher: MicroBatcher, student: Encoder
) -> None:
    """Many clients between their requests are still company: the next ones may land mid-run."""
    few, many = INLINE_MAX_CONNECTIONS, INLINE_MAX_CONNECTIONS + 1
    assert (
        await batcher.embed(tokens(student, "q"), deadline(), in_flight=1, connections=few)
    ).inline
    crowded = await batcher.embed(tokens(student, "q"), deadline(), in_flight=1, connections=many)
    right_after = await batcher.embed(tokens(student, "q"), deadline(), in_flight=1, connections=1)
    assert not crowded.inline and not right_after.inline  # the quiet period starts again
    await asyncio.sleep(INLINE_QUIET_S * 1.5)
    assert (
        await batcher.embed(tokens(student, "q"), deadline(), in_flight=1, connections=1)
    ).inline


async def test_inline_runs_can_be_turned_off(student: Encoder) -> None:
    b = MicroBatcher(
        student,
        max_batch_size=32,
        max_batch_tokens=8192,
        max_wait_s=0.002,
        max_queue=64,
        retry_after_s=1,
        metrics=Metrics(),
        inline_lone=False,
    )
    b.start()
    try:
        assert not (await b.embed(tokens(student, "alone"), deadline(), in_flight=1)).inline
    finally:
        await b.stop()


async def test_an_inline_failure_reaches_the_caller_and_readiness(
    batcher: MicroBatcher, student: Encoder
) -> None:
    bad = TokenRows([np.full(4, 10**9, dtype=np.int64)], [False])
    with pytest.raises(EncoderFailure):
        await batcher.embed(bad, deadline(), in_flight=1)
    assert not batcher.healthy
    assert (await batcher.embed(tokens(student, "fine"), deadline(), in_flight=1)).inline
    assert batcher.healthy


async def test_an_inline_query_keeps_the_deadline(batcher: MicroBatcher, student: Encoder) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(DeadlineExceeded):
        await batcher.embed(tokens(student, "too late"), loop.time() - 1, in_flight=1)
    assert batches_run(batcher) == 0  # refused before running
    long = tokens(student, " ".join(TEXTS * 8))  # a forward pass far longer than 0.1 ms
    with pytest.raises(DeadlineExceeded):  # answered after its deadline: refused too
        await batcher.embed(long, loop.time() + 1e-4, in_flight=1)
    assert batches_run(batcher) == 1
    labels = {"reason": "deadline"}
    assert batcher.metrics.registry.get_sample_value("tandem_rejected_total", labels) == 2


def test_the_inline_setting_names_the_connection_bound() -> None:
    description = ServerSettings.model_fields["inline_lone"].description or ""
    assert f"at most {INLINE_MAX_CONNECTIONS} clients are connected" in description
