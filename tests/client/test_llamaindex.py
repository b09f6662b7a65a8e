"""The LlamaIndex retriever against a live server.

Nodes carry the tandem id, score and metadata; ``MetadataFilters`` with
``==`` are passed through and other operators refused; and the canonical
"retrieve then synthesize" query engine runs end to end with LlamaIndex's own
``MockLLM`` test helper, which echoes the prompt it was given instead of
calling a model, so the test can see the retrieved text reached the prompt.
"""

from __future__ import annotations

import pytest
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from tandem.client import AsyncTandemClient, TandemClient
from tandem.client.llamaindex import TandemRetriever
from tests.support.server import API_KEY, QUERIES, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def climate_only() -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key="topic", value="climate")])


def test_nodes_carry_id_score_and_metadata(server: ServerProcess) -> None:
    with TandemClient(server.url, api_key=API_KEY) as client:
        retriever = TandemRetriever(client=client, similarity_top_k=5)
        nodes = retriever.retrieve(QUERIES[3])
        expected = client.search(QUERIES[3], k=5)
    assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
    assert [n.node_id for n in nodes] == [h.id for h in expected.results]
    for node, hit in zip(nodes, expected.results, strict=True):
        assert node.score == hit.score and node.text == hit.text
        assert node.metadata == hit.metadata


async def test_async_retrieve_with_metadata_filters(server: ServerProcess) -> None:
    async with AsyncTandemClient(server.url, api_key=API_KEY) as aclient:
        retriever = TandemRetriever(
            server.url,
            api_key=API_KEY,
            async_client=aclient,
            similarity_top_k=3,
            filters=climate_only(),
        )
        nodes = await retriever.aretrieve(QUERIES[0])
    assert len(nodes) == 3 and all(n.metadata["topic"] == "climate" for n in nodes)
    both = MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value="climate"),
            MetadataFilter(key="year", value=nodes[0].metadata["year"]),
        ],
        condition=FilterCondition.AND,
    )
    narrowed = TandemRetriever(server.url, api_key=API_KEY, filters=both).retrieve(QUERIES[0])
    assert narrowed and all(n.metadata["year"] == nodes[0].metadata["year"] for n in narrowed)


def test_unsupported_filters_are_refused_with_a_reason() -> None:
    greater = MetadataFilters(
        filters=[MetadataFilter(key="year", value=2000, operator=FilterOperator.GT)]
    )
    with pytest.raises(ValueError, match="operator '>' is not supported"):
        TandemRetriever(filters=greater)
    either = MetadataFilters(
        filters=[MetadataFilter(key="topic", value="a"), MetadataFilter(key="topic", value="b")],
        condition=FilterCondition.OR,
    )
    with pytest.raises(ValueError, match="ANDed"):
        TandemRetriever(filters=either)


def test_query_engine_retrieves_then_formats(tandem_env: ServerProcess) -> None:
    retriever = TandemRetriever(similarity_top_k=2)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    question = QUERIES[4]
    response = engine.query(question)
    nodes = retriever.retrieve(question)
    assert [n.node_id for n in response.source_nodes] == [n.node_id for n in nodes]
    answer = str(response)  # MockLLM answers with the prompt it got
    assert question in answer
    assert all(n.text in answer for n in nodes)
