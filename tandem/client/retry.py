"""When to retry a request, and how long to wait first.

Only answers that say "come back later" are retried: 429 (the server is at
its admission bound) and 503 (not ready, draining, or past its deadline),
plus connection failures that happened before the request was sent. Every
other 4xx is the caller's to fix and is raised at once.

Waits are exponential with jitter so that clients refused together do not
come back together; a ``Retry-After`` from the server is a floor, never cut
short. A ``Retry-After`` longer than ``max_retry_after_s`` is not waited for:
the error is raised so the caller can decide.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait between tries."""

    max_retries: int = 3
    backoff_s: float = 0.5  # the first back-off; it doubles with every retry
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), or None to give up."""
        if retry > self.max_retries:
            return None
        if retry_after is not None and retry_after > self.max_retry_after_s:
            return None
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        if retry_after is None:
            # "Equal jitter": at least half the back-off, so a retry is never immediate.
            return random.uniform(backoff / 2, backoff)
        return retry_after + random.uniform(0, backoff / 2)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
