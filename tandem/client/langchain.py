"""A LangChain retriever over a tandem server (extra ``tandem[langchain]``).

``TandemRetriever`` is a ``langchain_core`` ``BaseRetriever``: ``invoke`` and
``ainvoke`` return ``Document`` objects whose ``id`` is the tandem document id
and whose metadata holds the document's metadata plus ``score``. Options set
on the retriever (``k``, ``filter``, ``variant``, ...) can be overridden per
call, as LangChain's own retrievers allow: ``retriever.invoke(q, k=3)``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

from tandem.client.client import AsyncTandemClient, TandemClient
from tandem.schemas import FilterValue, SearchResponse

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"{missing}: the LangChain retriever needs pip install 'tandem[langchain]'"
    ) from missing

_OPTIONS = ("k", "filter", "variant", "rescore", "mode")


class TandemRetriever(BaseRetriever):
    """Documents from ``POST /search`` of a tandem server.

    Give ``url`` and ``api_key`` (default: ``TANDEM_URL`` and ``TANDEM_API_KEY``)
    or ready-made ``client`` / ``async_client`` to share their connection pools.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    url: str | None = None
    api_key: SecretStr | None = None
    k: int = Field(default=4, ge=1, description="documents per query")
    filter: dict[str, FilterValue] | None = Field(
        default=None, description="metadata equality: every key must equal its value"
    )
    variant: str | None = None
    rescore: bool | None = None
    mode: str | None = None
    timeout: float = 30.0
    client: TandemClient | None = Field(default=None, exclude=True)
    async_client: AsyncTandemClient | None = Field(default=None, exclude=True)
    _sync: TandemClient | None = PrivateAttr(None)
    _async: AsyncTandemClient | None = PrivateAttr(None)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return _documents(self._sync_client().search(query, **self._options(kwargs)))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        response = await self._async_client().search(query, **self._options(kwargs))
        return _documents(response)

    def _options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        unknown = set(overrides) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"unknown search options {sorted(unknown)}; known: {list(_OPTIONS)}")
        return {name: overrides.get(name, getattr(self, name)) for name in _OPTIONS}

    def _key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    def _sync_client(self) -> TandemClient:
        if self.client is not None:
            return self.client
        if self._sync is None:
            self._sync = TandemClient(self.url, api_key=self._key(), timeout=self.timeout)
        return self._sync

    def _async_client(self) -> AsyncTandemClient:
        if self.async_client is not None:
            return self.async_client
        if self._async is None:
            self._async = AsyncTandemClient(self.url, api_key=self._key(), timeout=self.timeout)
        return self._async


def _documents(response: SearchResponse) -> list[Document]:
    return [
        Document(
            id=hit.id,
            page_content=hit.text or "",
            metadata={**(hit.metadata or {}), "id": hit.id, "score": hit.score},
        )
        for hit in response.results
    ]
