"""A LlamaIndex retriever over a tandem server (extra ``tandem[llamaindex]``).

``TandemRetriever`` is a ``llama_index.core`` ``BaseRetriever``: ``retrieve``
and ``aretrieve`` return ``NodeWithScore`` objects holding a ``TextNode``
whose ``id_`` is the tandem document id and whose metadata is the document's.
Following LlamaIndex's vector retrievers, the number of results is
``similarity_top_k`` and filters are ``MetadataFilters``; tandem filters on
metadata equality, so only ``==`` filters joined by AND are accepted (plain
``{key: value}`` dicts too), and anything else is refused with a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tandem.client.client import AsyncTandemClient, TandemClient
from tandem.schemas import FilterValue, SearchResponse

try:
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.core.vector_stores.types import (
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
    )
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"{missing}: the LlamaIndex retriever needs pip install 'tandem[llamaindex]'"
    ) from missing


class TandemRetriever(BaseRetriever):
    """Nodes from ``POST /search`` of a tandem server.

    Give ``url`` and ``api_key`` (default: ``TANDEM_URL`` and ``TANDEM_API_KEY``)
    or ready-made ``client`` / ``async_client`` to share their connection pools.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        similarity_top_k: int = 10,
        filters: MetadataFilters | Mapping[str, FilterValue] | None = None,
        variant: str | None = None,
        rescore: bool | None = None,
        mode: str | None = None,
        timeout: float = 30.0,
        client: TandemClient | None = None,
        async_client: AsyncTandemClient | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.similarity_top_k = similarity_top_k
        self.filter = equality_filter(filters)
        self.variant = variant
        self.rescore = rescore
        self.mode = mode
        self._url = url
        self._api_key = api_key
        self._timeout = timeout
        self._client = client
        self._async_client = async_client

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._client is None:
            self._client = TandemClient(self._url, api_key=self._api_key, timeout=self._timeout)
        return _nodes(self._client.search(query_bundle.query_str, **self._options()))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self._async_client is None:
            self._async_client = AsyncTandemClient(
                self._url, api_key=self._api_key, timeout=self._timeout
            )
        response = await self._async_client.search(query_bundle.query_str, **self._options())
        return _nodes(response)

    def _options(self) -> dict[str, Any]:
        return {
            "k": self.similarity_top_k,
            "filter": self.filter,
            "variant": self.variant,
            "rescore": self.rescore,
            "mode": self.mode,
        }


def equality_filter(
    filters: MetadataFilters | Mapping[str, FilterValue] | None,
) -> dict[str, FilterValue] | None:
    """LlamaIndex ``MetadataFilters`` as tandem's ``{key: value}`` equality filter."""
    if filters is None:
        return None
    if not isinstance(filters, MetadataFilters):
        return dict(filters)
    if len(filters.filters) > 1 and filters.condition != FilterCondition.AND:
        raise ValueError(
            f"tandem filters are ANDed metadata equalities; condition {filters.condition} "
            "is not supported"
        )
    result: dict[str, FilterValue] = {}
    for item in filters.filters:
        if not isinstance(item, MetadataFilter):
            raise ValueError("nested MetadataFilters are not supported: tandem filters are flat")
        if item.operator != FilterOperator.EQ:
            raise ValueError(
                f"filter on {item.key!r}: operator {item.operator.value!r} is not supported; "
                "tandem filters on metadata equality (==)"
            )
        if not isinstance(item.value, str | int | float | bool):
            raise ValueError(f"filter on {item.key!r}: {item.value!r} is not a single value")
        result[item.key] = item.value
    return result


def _nodes(response: SearchResponse) -> list[NodeWithScore]:
    return [
        NodeWithScore(
            node=TextNode(id_=hit.id, text=hit.text or "", metadata=dict(hit.metadata or {})),
            score=hit.score,
        )
        for hit in response.results
    ]
