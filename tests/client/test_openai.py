"""The official ``openai`` client against tandem's ``/v1/embeddings``, float and base64.

Existing code that embeds with ``openai.OpenAI(base_url=...)`` must work when
pointed at tandem: the vectors must be the ones ``TandemClient.embed``
returns, whichever encoding the OpenAI client asks for.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import openai
import pytest

from tandem.client import TandemClient
from tests.support.server import API_KEY, QUERIES, ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def reference(server: ServerProcess) -> np.ndarray:
    with TandemClient(server.url, api_key=API_KEY) as client:
        data = client.embed(QUERIES[:3]).data
    return np.array([d.embedding for d in data], dtype=np.float32)  # (3, dim)


def served_model(oai: openai.OpenAI) -> str:
    models = [m.id for m in oai.models.list()]
    assert len(models) == 1
    return models[0]


def test_float_encoding(oai: openai.OpenAI, reference: np.ndarray) -> None:
    model = served_model(oai)
    response = oai.embeddings.create(model=model, input=QUERIES[:3], encoding_format="float")
    assert response.model == model and response.usage.prompt_tokens > 0
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_base64_encoding(oai: openai.OpenAI, reference: np.ndarray) -> None:
    model = served_model(oai)
    response = oai.embeddings.create(model=model, input=QUERIES[:3], encoding_format="base64")
    encoded: list[object] = [d.embedding for d in response.data]
    assert all(isinstance(e, str) for e in encoded)  # asked for base64, handed back as is
    vectors = np.stack([np.frombuffer(base64.b64decode(str(e)), dtype="<f4") for e in encoded])
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_default_encoding_is_decoded_by_the_client(
    oai: openai.OpenAI, reference: np.ndarray
) -> None:
    # Without encoding_format the openai client requests base64 and decodes it itself.
    response = oai.embeddings.create(model=served_model(oai), input=QUERIES[:3])
    vectors = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_single_input_and_dimensions(oai: openai.OpenAI, reference: np.ndarray) -> None:
    response = oai.embeddings.create(model=served_model(oai), input=QUERIES[0], dimensions=128)
    (item,) = response.data
    vector = np.array(item.embedding, dtype=np.float32)
    expected = reference[0, :128] / np.linalg.norm(reference[0, :128])
    np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_unknown_model_is_an_openai_not_found_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.status_code == 404
    # tandem's error body is {"error": message, "type": ...}; openai hands "error" back as body.
    assert isinstance(caught.value.body, str) and "text-embedding-3-small" in caught.value.body
