"""The Haystack retriever component against a live server.

Documents carry the tandem id, score and metadata; Haystack filter syntax
with ``==`` on ``meta.*`` is passed through (with the component's
``filter_policy``) and other filters refused; the component serializes with
the pipeline; and the canonical "retrieve then build the prompt" pipeline
runs end to end, sync and async (no generator, so no LLM call).
"""

from __future__ import annotations

import inspect

import pytest
from haystack import Document, Pipeline
from haystack.components.builders import PromptBuilder
from haystack.document_stores.types import FilterPolicy
from haystack.utils import Secret

from tandem.client import TandemClient
from tandem.client.haystack import TandemRetriever
from tests.support.server import API_KEY, QUERIES, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.anyio]
TEMPLATE = """Given these documents, answer the question.
{% for document in documents %}
- {{ document.content }}
{% endfor %}
Question: {{ question }}"""


def on_topic(topic: str) -> dict[str, object]:
    return {"field": "meta.topic", "operator": "==", "value": topic}


def rag_pipeline(retriever: TandemRetriever) -> Pipeline:
    pipeline = Pipeline()
    pipeline.add_component("retriever", retriever)
    pipeline.add_component(
        "prompt_builder", PromptBuilder(template=TEMPLATE, required_variables=["question"])
    )
    pipeline.connect("retriever.documents", "prompt_builder.documents")
    return pipeline


def test_documents_carry_id_score_and_metadata(server: ServerProcess) -> None:
    retriever = TandemRetriever(server.url, api_key=Secret.from_token(API_KEY), top_k=5)
    documents = retriever.run(QUERIES[3])["documents"]
    with TandemClient(server.url, api_key=API_KEY) as client:
        expected = client.search(QUERIES[3], k=5)
    assert all(isinstance(d, Document) for d in documents)
    assert [d.id for d in documents] == [h.id for h in expected.results]
    for document, hit in zip(documents, expected.results, strict=True):
        assert document.score == hit.score and document.content == hit.text
        assert document.meta == hit.metadata
    assert len(retriever.run(QUERIES[3], top_k=2)["documents"]) == 2


async def test_filters_with_policy_sync_and_async(tandem_env: ServerProcess) -> None:
    retriever = TandemRetriever(top_k=4, filters=on_topic("climate"))
    climate = retriever.run(QUERIES[0])["documents"]
    assert len(climate) == 4 and all(d.meta["topic"] == "climate" for d in climate)
    replaced = await retriever.run_async(QUERIES[0], filters=on_topic("health"))
    assert all(d.meta["topic"] == "health" for d in replaced["documents"])

    year = climate[0].meta["year"]
    merging = TandemRetriever(
        top_k=4, filters=on_topic("climate"), filter_policy=FilterPolicy.MERGE
    )
    merged = merging.run(
        QUERIES[0], filters={"field": "meta.year", "operator": "==", "value": year}
    )["documents"]
    assert merged
    assert all(d.meta["topic"] == "climate" and d.meta["year"] == year for d in merged)


def test_unsupported_filters_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="operator '>' is not supported"):
        TandemRetriever(filters={"field": "meta.year", "operator": ">", "value": 2000})
    with pytest.raises(ValueError, match="ANDed"):
        TandemRetriever(filters={"operator": "OR", "conditions": [on_topic("a"), on_topic("b")]})
    with pytest.raises(ValueError, match="meta.<key>"):
        TandemRetriever(filters={"field": "content", "operator": "==", "value": "x"})


def test_pipeline_serializes_without_the_key(tandem_env: ServerProcess) -> None:
    pipeline = rag_pipeline(TandemRetriever(top_k=2, filters=on_topic("climate")))
    saved = pipeline.dumps()
    assert API_KEY not in saved and "TANDEM_API_KEY" in saved
    # Haystack 3 loads classes only from modules the caller trusts; Haystack 2 has no allowlist.
    trusted = ["tandem.client.haystack"]
    allow = "allowed_modules" in inspect.signature(Pipeline.loads).parameters
    loaded = Pipeline.loads(saved, allowed_modules=trusted) if allow else Pipeline.loads(saved)
    retriever = loaded.get_component("retriever")
    assert isinstance(retriever, TandemRetriever)
    assert retriever.top_k == 2 and retriever.filters == on_topic("climate")
    documents = retriever.run(QUERIES[0])["documents"]
    assert len(documents) == 2 and all(d.meta["topic"] == "climate" for d in documents)


async def test_retrieve_then_build_prompt_pipeline(tandem_env: ServerProcess) -> None:
    question = QUERIES[1]
    pipeline = rag_pipeline(TandemRetriever(top_k=3))
    inputs = {"retriever": {"query": question}, "prompt_builder": {"question": question}}
    result = pipeline.run(inputs, include_outputs_from={"retriever"})
    documents = result["retriever"]["documents"]
    prompt = result["prompt_builder"]["prompt"]
    assert len(documents) == 3 and prompt.endswith(f"Question: {question}")
    assert all(d.content in prompt for d in documents)

    result_async = await rag_pipeline(TandemRetriever(top_k=3)).run_async(inputs)
    assert result_async["prompt_builder"]["prompt"] == prompt
