"""The LangChain retriever against a live server.

LangChain's own standard tests (``langchain_tests.RetrieversIntegrationTests``:
``k`` in the constructor and in ``invoke``, ``invoke``/``ainvoke`` return
``Document`` objects) run against it, then what the standard tests do not
cover: ids, scores and metadata, filters, and the canonical "retrieve then
format" chain from LangChain's RAG tutorial, up to the prompt (no LLM).
"""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import SecretStr

from tandem.client import AsyncTandemClient, InvalidRequestError, TandemClient
from tandem.client.langchain import TandemRetriever
from tests.support.server import API_KEY, QUERIES, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


class TestTandemRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's standard retriever tests; the retriever reads TANDEM_URL/TANDEM_API_KEY."""

    @pytest.fixture(autouse=True)
    def _live_server(self, tandem_env: ServerProcess) -> None:
        """Every standard test talks to the live server through the environment."""

    @property
    def retriever_constructor(self) -> type[TandemRetriever]:
        return TandemRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, object]:
        return {"k": 2}

    @property
    def retriever_query_example(self) -> str:
        return QUERIES[0]


def test_documents_carry_id_score_and_metadata(server: ServerProcess) -> None:
    with TandemClient(server.url, api_key=API_KEY) as client:
        retriever = TandemRetriever(client=client, k=5)
        docs = retriever.invoke(QUERIES[3])
        expected = client.search(QUERIES[3], k=5)
    assert [d.id for d in docs] == [h.id for h in expected.results]
    for doc, hit in zip(docs, expected.results, strict=True):
        assert doc.page_content == hit.text
        assert doc.metadata == {**(hit.metadata or {}), "id": hit.id, "score": hit.score}


async def test_async_filters_and_per_call_overrides(server: ServerProcess) -> None:
    async with AsyncTandemClient(server.url, api_key=API_KEY) as aclient:
        retriever = TandemRetriever(
            url=server.url,
            api_key=SecretStr(API_KEY),
            async_client=aclient,
            filter={"topic": "climate"},
        )
        docs = await retriever.ainvoke(QUERIES[0])
        assert len(docs) == 4  # LangChain's default k
        assert all(d.metadata["topic"] == "climate" for d in docs)
        health = await retriever.ainvoke(QUERIES[0], k=2, filter={"topic": "health"})
        assert len(health) == 2 and all(d.metadata["topic"] == "health" for d in health)
        binary = retriever.invoke(QUERIES[0], variant="bin-768", rescore=False)
        assert len(binary) == 4
    with pytest.raises(TypeError, match="topk"):
        retriever.invoke(QUERIES[0], topk=3)
    with pytest.raises(InvalidRequestError) as caught:
        retriever.invoke(QUERIES[0], variant="nope")
    assert caught.value.type == "unknown_variant"


def test_retrieve_then_format_chain(tandem_env: ServerProcess) -> None:
    """LangChain's RAG tutorial chain, from the question to the filled prompt."""
    retriever = TandemRetriever(k=3)
    prompt = ChatPromptTemplate.from_template(
        "Answer the question using only this context:\n{context}\n\nQuestion: {question}"
    )

    def format_docs(docs: list[Document]) -> str:
        return "\n\n".join(doc.page_content for doc in docs)

    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt
    question = QUERIES[3]
    text = chain.invoke(question).to_string()
    docs = retriever.invoke(question)
    assert text.endswith(f"Question: {question}")
    assert all(doc.page_content in text for doc in docs) and len(docs) == 3
