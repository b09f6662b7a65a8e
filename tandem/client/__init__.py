"""Call a tandem server from Python: typed, pooled, retrying (httpx + pydantic only).

    from tandem.client import TandemClient

    with TandemClient("http://localhost:8080") as client:
        for hit in client.search("why is the sea level rising", k=3).results:
            print(hit.score, hit.id, hit.text)

Retrievers for LangChain, LlamaIndex and Haystack live in
``tandem.client.langchain``, ``tandem.client.llamaindex`` and
``tandem.client.haystack`` (extras ``tandem[langchain]`` and so on); they are
not imported here, so this package never pulls a framework in.
"""

from tandem.client.client import AsyncTandemClient, TandemClient
from tandem.client.errors import (
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    TandemAPIError,
    TandemConnectionError,
    TandemError,
    TandemTimeoutError,
)
from tandem.client.retry import RetryPolicy
from tandem.schemas import EmbeddingsResponse, Hit, SearchResponse, Timings

__all__ = [
    "AsyncTandemClient",
    "AuthenticationError",
    "BadRequestError",
    "EmbeddingsResponse",
    "Hit",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "SearchResponse",
    "ServiceUnavailableError",
    "TandemAPIError",
    "TandemClient",
    "TandemConnectionError",
    "TandemError",
    "TandemTimeoutError",
    "Timings",
]
