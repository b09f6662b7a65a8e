"""Request and response bodies of the HTTP API, shared by the server and ``tandem.client``.

A low layer (pydantic only): the server validates requests and renders
responses with these models, and the client parses the same responses with
them, so the two cannot drift apart.

Unknown fields are refused (``extra="forbid"``) so a typo such as ``topk``
is a 422 rather than a silently ignored option, and types are strict (the
schema says ``integer``, so ``"k": true`` or ``"k": "10"`` is a 422 too).
Hard bounds live here; bounds that depend on configuration (``max_k``,
``max_batch_queries``) are checked by the search service.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FilterValue = str | int | float | bool

__all__ = [
    "BatchSearchRequest",
    "BatchSearchResponse",
    "EmbeddingData",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "ErrorBody",
    "ErrorDetail",
    "FilterValue",
    "Hit",
    "ModelEntry",
    "ModelList",
    "ReloadResponse",
    "SearchOptions",
    "SearchRequest",
    "SearchResponse",
    "Timings",
    "Usage",
]


class _Request(BaseModel):
    # strict: JSON types as declared in the schema (``"k": true`` is not k=1).
    model_config = ConfigDict(extra="forbid", strict=True)


class SearchOptions(_Request):
    """Options shared by single and batch search."""

    k: int = Field(10, ge=1, le=1000, description="results per query")
    variant: str | None = Field(None, description="index variant; default: the server's")
    rescore: bool | None = Field(
        None, description="rescore k x oversample candidates with full-dim vectors"
    )
    oversample: int | None = Field(None, ge=1, le=50, description="candidates per result")
    include_text: bool = True
    include_metadata: bool = True
    fields: list[Literal["id", "score", "text", "metadata"]] | None = Field(
        None,
        description="what each hit carries; id and score always come. "
        'E.g. ["id", "score"] skips document text and metadata (smaller, faster answers). '
        "Overrides include_text and include_metadata",
    )
    filter: dict[str, FilterValue] | None = Field(
        None, description="metadata equality: every key must equal its value"
    )
    mode: Literal["asymmetric", "fused"] | None = Field(
        None,
        description="asymmetric: the student's teacher-space vector against teacher documents; "
        "fused: also its native vector against the bundle's student view, scores "
        "w·asym + (1−w)·student. Default: the server's",
    )


class SearchRequest(SearchOptions):
    query: str


class BatchSearchRequest(SearchOptions):
    queries: list[str] = Field(min_length=1)


class Hit(BaseModel):
    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] | None = None


class Timings(BaseModel):
    """Milliseconds per stage; embed and queue are shared by the batch the query rode in."""

    queue: float
    tokenize: float
    embed: float
    search: float
    rescore: float
    fetch: float = Field(0.0, description="reading the hits' documents")
    total: float
    index: float | None = Field(
        None, description="of search + rescore, the time spent in a remote index tier (Milvus)"
    )


class SearchResponse(BaseModel):
    results: list[Hit]
    mode: str = "asymmetric"
    weight: float | None = Field(None, description="fused: w of the asymmetric cosine")
    variant: str
    rescored: bool
    stages: list[str]
    timings_ms: Timings
    truncated: bool = Field(description="the query was cut to the encoder's maximum length")


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]


class EmbeddingsRequest(_Request):
    """OpenAI's /v1/embeddings request (token-id inputs are not supported)."""

    input: str | list[str]
    model: str | None = None
    dimensions: int | None = Field(None, ge=1, description="truncate, then re-normalize")
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tandem"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]


class ErrorDetail(BaseModel):
    loc: list[str]
    msg: str
    type: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a message that says what to fix, and a stable ``type``."""

    error: str
    type: str
    details: list[ErrorDetail] | None = Field(
        None, description="one entry per invalid field (validation errors only)"
    )


class ReloadResponse(BaseModel):
    status: Literal["accepted", "swapped", "unchanged"]
    version: str | None = None
    previous_version: str | None = None
    seconds: float | None = None
