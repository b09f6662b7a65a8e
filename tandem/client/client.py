"""``TandemClient`` and ``AsyncTandemClient``: tandem's HTTP API as typed Python calls.

Both wrap one pooled httpx client (kept open for the client's life; use them
as context managers or call ``close``), send the API key as a Bearer token,
retry 429/503 with jittered back-off honouring ``Retry-After``
(``tandem.client.retry``), and raise ``tandem.client.errors`` exceptions that
carry the server's error ``type`` and message. Responses are parsed with the
server's own wire models (``tandem.schemas``).

Nothing here imports the server side (FastAPI, onnxruntime, FAISS, numpy):
an application needs only httpx and pydantic.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from tandem import __version__
from tandem.client.errors import (
    TandemAPIError,
    TandemConnectionError,
    TandemTimeoutError,
    error_from_response,
)
from tandem.client.retry import RETRY_STATUSES, RetryPolicy, parse_retry_after
from tandem.schemas import (
    BatchSearchResponse,
    EmbeddingsResponse,
    FilterValue,
    SearchResponse,
)

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:8080"
URL_ENV = "TANDEM_URL"
API_KEY_ENV = "TANDEM_API_KEY"
Method = Literal["GET", "POST"]
M = TypeVar("M", bound=BaseModel)
# Connection failures before anything was sent are safe to retry; a read timeout is not
# (the server may still be working on the request).
_RETRYABLE_TRANSPORT = (httpx.ConnectError, httpx.ConnectTimeout)


class _Settings:
    """What both clients share: URL, headers, timeout, retry policy and the retry count."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        retry: RetryPolicy | None,
    ) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.headers = {"User-Agent": f"tandem-client/{__version__}"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.retry = retry or RetryPolicy()
        self._retries = 0
        self._lock = threading.Lock()

    @property
    def retries(self) -> int:
        """Retries made so far by this client (all calls, all threads)."""
        return self._retries

    def request_args(
        self, method: Method, path: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Keyword arguments of ``httpx.(Async)Client.request`` for one attempt."""
        return {
            "method": method,
            "url": f"{self.url}{path}",
            "json": body,
            "headers": self.headers,
            "timeout": self.timeout,
        }

    def retry_delay(
        self, attempt: int, method: str, path: str, outcome: httpx.Response | httpx.TransportError
    ) -> float:
        """Seconds to wait before retrying failed attempt ``attempt`` (1-based); raises to give up.

        Both clients' retry loops run on this one decision: a refused connection,
        429 and 503 are retried under the policy; anything else raises at once.
        """
        if isinstance(outcome, httpx.TransportError):
            # Only a connection that never carried the request is safe to repeat.
            delay = (
                self.retry.delay(attempt, None)
                if isinstance(outcome, _RETRYABLE_TRANSPORT)
                else None
            )
            if delay is None:
                raise self.unreachable(outcome) from outcome
            cause = "connection failed"
        else:
            delay = None
            if outcome.status_code in RETRY_STATUSES:
                retry_after = parse_retry_after(outcome.headers.get("retry-after"))
                delay = self.retry.delay(attempt, retry_after)
            if delay is None:
                raise self.fail(outcome)
            cause = str(outcome.status_code)
        logger.debug("%s %s: %s, retry %d in %.2fs", method, path, cause, attempt, delay)
        with self._lock:
            self._retries += 1
        return delay

    def fail(self, response: httpx.Response) -> TandemAPIError:
        return error_from_response(response, parse_retry_after(response.headers.get("retry-after")))

    def unreachable(self, exc: httpx.TransportError) -> TandemConnectionError:
        kind = (
            TandemTimeoutError if isinstance(exc, httpx.TimeoutException) else TandemConnectionError
        )
        return kind(f"{self.url}: {type(exc).__name__}: {exc}")


def _search_body(
    k: int,
    variant: str | None,
    rescore: bool | None,
    oversample: int | None,
    filter: Mapping[str, FilterValue] | None,
    mode: str | None,
    include_text: bool,
    include_metadata: bool,
) -> dict[str, Any]:
    """Search options as the server reads them; unset options are left to the server."""
    body: dict[str, Any] = {
        "k": k,
        "include_text": include_text,
        "include_metadata": include_metadata,
    }
    optional = {
        "variant": variant,
        "rescore": rescore,
        "oversample": oversample,
        "filter": dict(filter) if filter is not None else None,
        "mode": mode,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


def _embed_body(
    texts: str | Sequence[str], dimensions: int | None, model: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"input": texts if isinstance(texts, str) else list(texts)}
    if dimensions is not None:
        body["dimensions"] = dimensions
    if model is not None:
        body["model"] = model
    return body


def _parse(model: type[M], response: httpx.Response) -> M:
    return model.model_validate_json(response.content)


class TandemClient:
    """Blocking client; thread-safe, one connection pool for all threads.

    ``url`` defaults to ``TANDEM_URL`` (else ``http://localhost:8080``) and
    ``api_key`` to ``TANDEM_API_KEY``. Pass ``http_client`` to bring your own
    ``httpx.Client`` (proxies, TLS, event hooks); it is then yours to close.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 100,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._settings = _Settings(url, api_key, timeout, retry)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
        )

    @property
    def url(self) -> str:
        return self._settings.url

    @property
    def retries(self) -> int:
        """Retries made so far (429, 503 or connection failures that were tried again)."""
        return self._settings.retries

    # -- the API ---------------------------------------------------------------
    def search(
        self,
        query: str,
        *,
        k: int = 10,
        variant: str | None = None,
        rescore: bool | None = None,
        oversample: int | None = None,
        filter: Mapping[str, FilterValue] | None = None,
        mode: str | None = None,
        include_text: bool = True,
        include_metadata: bool = True,
    ) -> SearchResponse:
        """The k best documents for one query (``POST /search``)."""
        body = _search_body(
            k, variant, rescore, oversample, filter, mode, include_text, include_metadata
        )
        return _parse(SearchResponse, self._request("POST", "/search", {"query": query, **body}))

    def search_many(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        variant: str | None = None,
        rescore: bool | None = None,
        oversample: int | None = None,
        filter: Mapping[str, FilterValue] | None = None,
        mode: str | None = None,
        include_text: bool = True,
        include_metadata: bool = True,
    ) -> list[SearchResponse]:
        """One result per query, in order, from one request (``POST /search/batch``)."""
        body = _search_body(
            k, variant, rescore, oversample, filter, mode, include_text, include_metadata
        )
        response = self._request("POST", "/search/batch", {"queries": list(queries), **body})
        return _parse(BatchSearchResponse, response).results

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> EmbeddingsResponse:
        """Query-side embeddings from the student (``POST /v1/embeddings``, float format)."""
        body = _embed_body(texts, dimensions, model)
        return _parse(EmbeddingsResponse, self._request("POST", "/v1/embeddings", body))

    def info(self) -> dict[str, Any]:
        """What the server serves: bundle, variants, student, batching (``GET /info``)."""
        data: dict[str, Any] = self._request("GET", "/info").json()
        return data

    def ready(self) -> bool:
        """Whether the server answers ``/readyz`` with 200; False if not ready or unreachable."""
        try:
            response = self._http.get(
                f"{self.url}/readyz", headers=self._settings.headers, timeout=self._settings.timeout
            )
        except httpx.TransportError:
            return False
        return response.status_code == 200

    # -- plumbing --------------------------------------------------------------
    def _request(
        self, method: Method, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | httpx.TransportError
            try:
                outcome = self._http.request(**self._settings.request_args(method, path, body))
            except httpx.TransportError as exc:
                outcome = exc
            else:
                if outcome.is_success:
                    return outcome
            time.sleep(self._settings.retry_delay(attempt, method, path, outcome))

    def close(self) -> None:
        """Close the connection pool (only if this client created it)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> TandemClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTandemClient:
    """The asyncio twin of ``TandemClient``: same methods, awaited.

    Bring your own ``httpx.AsyncClient`` with ``http_client``; it is then
    yours to close.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 100,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = _Settings(url, api_key, timeout, retry)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
        )

    @property
    def url(self) -> str:
        return self._settings.url

    @property
    def retries(self) -> int:
        """Retries made so far (429, 503 or connection failures that were tried again)."""
        return self._settings.retries

    async def search(
        self,
        query: str,
        *,
        k: int = 10,
        variant: str | None = None,
        rescore: bool | None = None,
        oversample: int | None = None,
        filter: Mapping[str, FilterValue] | None = None,
        mode: str | None = None,
        include_text: bool = True,
        include_metadata: bool = True,
    ) -> SearchResponse:
        """The k best documents for one query (``POST /search``)."""
        body = _search_body(
            k, variant, rescore, oversample, filter, mode, include_text, include_metadata
        )
        response = await self._request("POST", "/search", {"query": query, **body})
        return _parse(SearchResponse, response)

    async def search_many(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        variant: str | None = None,
        rescore: bool | None = None,
        oversample: int | None = None,
        filter: Mapping[str, FilterValue] | None = None,
        mode: str | None = None,
        include_text: bool = True,
        include_metadata: bool = True,
    ) -> list[SearchResponse]:
        """One result per query, in order, from one request (``POST /search/batch``)."""
        body = _search_body(
            k, variant, rescore, oversample, filter, mode, include_text, include_metadata
        )
        response = await self._request("POST", "/search/batch", {"queries": list(queries), **body})
        return _parse(BatchSearchResponse, response).results

    async def embed(
        self,
        texts: str | Sequence[str],
        *,
        dimensions: int | None = None,
        model: str | None = None,
    ) -> EmbeddingsResponse:
        """Query-side embeddings from the student (``POST /v1/embeddings``, float format)."""
        body = _embed_body(texts, dimensions, model)
        return _parse(EmbeddingsResponse, await self._request("POST", "/v1/embeddings", body))

    async def info(self) -> dict[str, Any]:
        """What the server serves: bundle, variants, student, batching (``GET /info``)."""
        data: dict[str, Any] = (await self._request("GET", "/info")).json()
        return data

    async def ready(self) -> bool:
        """Whether the server answers ``/readyz`` with 200; False if not ready or unreachable."""
        try:
            response = await self._http.get(
                f"{self.url}/readyz", headers=self._settings.headers, timeout=self._settings.timeout
            )
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def _request(
        self, method: Method, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            outcome: httpx.Response | httpx.TransportError
            try:
                args = self._settings.request_args(method, path, body)
                outcome = await self._http.request(**args)
            except httpx.TransportError as exc:
                outcome = exc
            else:
                if outcome.is_success:
                    return outcome
            await asyncio.sleep(self._settings.retry_delay(attempt, method, path, outcome))

    async def aclose(self) -> None:
        """Close the connection pool (only if this client created it)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncTandemClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
