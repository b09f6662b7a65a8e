"""A Haystack retriever component over a tandem server (extra ``tandem[haystack]``).

``TandemRetriever`` follows Haystack's retriever conventions: ``run(query,
filters, top_k)`` returns ``{"documents": [...]}`` (``run_async`` too), the
API key is a ``Secret`` (``TANDEM_API_KEY`` by default), runtime filters
combine with init filters by ``filter_policy``, and the component serializes
with ``to_dict``/``from_dict`` so pipelines holding it save to YAML.

Filters use Haystack's syntax; tandem filters on metadata equality, so only
``==`` comparisons on ``meta.<key>`` joined by ``AND`` are accepted, and
anything else is refused with a message.
"""

from __future__ import annotations

from typing import Any

from tandem.client.client import AsyncTandemClient, TandemClient
from tandem.schemas import FilterValue, SearchResponse

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.document_stores.types import FilterPolicy
    from haystack.document_stores.types.filter_policy import apply_filter_policy
    from haystack.utils import Secret, deserialize_secrets_inplace
except ImportError as missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"{missing}: the Haystack retriever needs pip install 'tandem[haystack]'"
    ) from missing


@component
class TandemRetriever:
    """Documents from ``POST /search`` of a tandem server (``url`` defaults to ``TANDEM_URL``)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: Secret = Secret.from_env_var("TANDEM_API_KEY", strict=False),  # noqa: B008
        top_k: int = 10,
        filters: dict[str, Any] | None = None,
        filter_policy: FilterPolicy = FilterPolicy.REPLACE,
        variant: str | None = None,
        rescore: bool | None = None,
        mode: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.top_k = top_k
        self.filters = filters
        self.filter_policy = (
            FilterPolicy.from_str(filter_policy)
            if isinstance(filter_policy, str)
            else filter_policy
        )
        self.variant = variant
        self.rescore = rescore
        self.mode = mode
        self.timeout = timeout
        equality_filter(filters)  # refuse what tandem cannot do now, not at the first query
        self._client: TandemClient | None = None
        self._async_client: AsyncTandemClient | None = None

    @component.output_types(documents=list[Document])
    def run(
        self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None
    ) -> dict[str, list[Document]]:
        """The ``top_k`` documents for ``query``, best first, with ``score`` set."""
        if self._client is None:
            self._client = TandemClient(self.url, api_key=self._key(), timeout=self.timeout)
        response = self._client.search(query, **self._options(filters, top_k))
        return {"documents": _documents(response)}

    @component.output_types(documents=list[Document])
    async def run_async(
        self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None
    ) -> dict[str, list[Document]]:
        """``run`` for ``AsyncPipeline`` / ``Pipeline.run_async``."""
        if self._async_client is None:
            self._async_client = AsyncTandemClient(
                self.url, api_key=self._key(), timeout=self.timeout
            )
        response = await self._async_client.search(query, **self._options(filters, top_k))
        return {"documents": _documents(response)}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self,
            url=self.url,
            api_key=self.api_key.to_dict(),
            top_k=self.top_k,
            filters=self.filters,
            filter_policy=self.filter_policy.value,
            variant=self.variant,
            rescore=self.rescore,
            mode=self.mode,
            timeout=self.timeout,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TandemRetriever:
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        retriever: TandemRetriever = default_from_dict(cls, data)
        return retriever

    def _key(self) -> str | None:
        return self.api_key.resolve_value()

    def _options(self, filters: dict[str, Any] | None, top_k: int | None) -> dict[str, Any]:
        combined = apply_filter_policy(self.filter_policy, self.filters, filters)
        return {
            "k": top_k or self.top_k,
            "filter": equality_filter(combined),
            "variant": self.variant,
            "rescore": self.rescore,
            "mode": self.mode,
        }


def equality_filter(filters: dict[str, Any] | None) -> dict[str, FilterValue] | None:
    """A Haystack filter as tandem's ``{key: value}`` equality filter."""
    if not filters:
        return None
    if "conditions" in filters:
        if filters.get("operator") != "AND":
            raise ValueError(
                f"tandem filters are ANDed metadata equalities; {filters.get('operator')!r} "
                "is not supported"
            )
        result: dict[str, FilterValue] = {}
        for condition in filters["conditions"]:
            nested = equality_filter(condition)
            result.update(nested or {})
        return result
    field, operator, value = filters.get("field"), filters.get("operator"), filters.get("value")
    if operator != "==":
        raise ValueError(
            f"filter on {field!r}: operator {operator!r} is not supported; tandem filters on "
            "metadata equality (==)"
        )
    if not isinstance(field, str) or not field.startswith("meta."):
        raise ValueError(f"filter field {field!r}: tandem filters on metadata, 'meta.<key>'")
    if not isinstance(value, str | int | float | bool):
        raise ValueError(f"filter on {field!r}: {value!r} is not a single value")
    return {field.removeprefix("meta."): value}


def _documents(response: SearchResponse) -> list[Document]:
    return [
        Document(id=hit.id, content=hit.text, meta=dict(hit.metadata or {}), score=hit.score)
        for hit in response.results
    ]
