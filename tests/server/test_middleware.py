"""The ASGI middleware around a small downstream app: body limit and client disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tandem.server.metrics import Metrics
from tandem.server.middleware import BodyLimitAndDisconnect, RequestMetrics

pytestmark = pytest.mark.anyio
SCOPE = {"type": "http", "method": "POST", "path": "/search", "headers": []}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SlowApp:
    """Reads its body, then takes 30 s to answer unless cancelled."""

    def __init__(self) -> None:
        self.body = b""
        self.cancelled = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.body = (await receive())["body"]
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})


def client(messages: list[dict[str, Any]], disconnect_after: float | None) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if disconnect_after is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(disconnect_after or 0)
        return {"type": "http.disconnect"}

    return receive


async def test_a_client_that_goes_away_cancels_the_handler() -> None:
    app = SlowApp()
    metrics = Metrics()
    stack = RequestMetrics(BodyLimitAndDisconnect(app, max_body_bytes=1024), metrics)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    body = [{"type": "http.request", "body": b'{"query": "x"}', "more_body": False}]
    await asyncio.wait_for(stack(dict(SCOPE), client(body, 0.05), send), timeout=10)
    assert app.body == b'{"query": "x"}' and app.cancelled and sent == []
    assert (
        metrics.registry.get_sample_value(
            "tandem_requests_total", {"route": "unmatched", "status": "499"}
        )
        == 1
    )


async def test_bodies_over_the_limit_are_413_without_reaching_the_app() -> None:
    app = SlowApp()
    stack = BodyLimitAndDisconnect(app, max_body_bytes=10)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    chunks = [
        {"type": "http.request", "body": b"123456", "more_body": True},
        {"type": "http.request", "body": b"789012", "more_body": False},
    ]
    await asyncio.wait_for(stack(dict(SCOPE), client(chunks, None), send), timeout=10)
    assert app.body == b"" and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["type"] == "payload_too_large"
