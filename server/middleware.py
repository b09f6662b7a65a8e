"""Pure ASGI middleware: request metrics, body limit, and cancel-on-disconnect.

Pure ASGI rather than ``BaseHTTPMiddleware``: it adds no task or stream per
request beyond what each feature needs, which matters at ~1 ms per query.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tandem.server.errors import error_body
from tandem.server.metrics import Metrics

# nginx's "client closed request": the client went away before the answer.
CLIENT_CLOSED = 499


class RequestMetrics:
    """Count requests by route template and status, and time them end to end."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = CLIENT_CLOSED

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = 500  # Starlette's outermost handler turns it into a 500
            raise
        finally:
            route = _route_label(scope)
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.request_seconds.labels(route=route).observe(time.perf_counter() - started)


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths are not used as labels: a scanner would explode the cardinality.
    return path if isinstance(path, str) else "unmatched"


class BodyLimitAndDisconnect:
    """Read the body under a size cap, then cancel the handler if the client disconnects.

    Cancelling the handler cancels its wait on the micro-batcher, so the
    batcher skips the query instead of embedding it for nobody.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _send_json(
                    send,
                    413,
                    error_body(
                        f"request body is larger than {self.max_body_bytes} bytes",
                        "payload_too_large",
                    ),
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        handler = asyncio.current_task()
        assert handler is not None  # ASGI apps always run inside a task
        disconnected = asyncio.Event()
        response_done = False

        async def after_body() -> Message:
            await disconnected.wait()
            return {"type": "http.disconnect"}

        replay = replay_body(body, after_body)

        async def send_wrapper(message: Message) -> None:
            nonlocal response_done
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_done = True
            await send(message)

        async def watch() -> None:
            message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
            disconnected.set()
            if not response_done:
                handler.cancel()

        # A plain asyncio task, not an anyio task group: this runs on every
        # request, and the group's cancel scopes cost more than the watch itself.
        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, replay, send_wrapper)
        except asyncio.CancelledError:
            if not disconnected.is_set() or response_done:
                raise  # shutdown, not a departed client
            handler.uncancel()  # the client left: nothing to answer, nothing to undo
        finally:
            watcher.cancel()


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def replay_body(body: bytes, then: Receive) -> Receive:
    """A ``receive`` that gives a body already read, whole, then what ``then`` gives."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return replay
