"""What the search service takes and gives: plain data, no HTTP.

Routes turn request bodies into these (``tandem.server.schemas``) and these
into response bodies (``tandem.server.routes``); the service, tests and
benchmarks use them directly. A new request option (e.g. a search ``mode``)
is one more field on ``SearchOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FilterValue = str | int | float | bool
HitField = Literal["id", "score", "text", "metadata"]
ALL_FIELDS: frozenset[HitField] = frozenset(("id", "score", "text", "metadata"))


@dataclass(frozen=True)
class SearchOptions:
    """One request's search options, shared by all of its queries."""

    k: int = 10
    variant: str | None = None  # None: the server's default variant
    rescore: bool | None = None  # None: the server's rescore mode decides
    oversample: int | None = None  # None: the server's default
    filter: dict[str, FilterValue] | None = None
    fields: frozenset[HitField] = ALL_FIELDS  # what each hit carries
    mode: Literal["asymmetric", "fused"] | None = None  # None: the server's default mode

    @property
    def needs_documents(self) -> bool:
        """Whether hits need the docstore beyond ids (text or metadata)."""
        return "text" in self.fields or "metadata" in self.fields


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str | None = None  # None when not asked for
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class StageTimings:
    """Seconds per stage; queue and embed are shared by the micro-batch the query rode in."""

    queue_s: float = 0.0
    tokenize_s: float = 0.0
    embed_s: float = 0.0
    search_s: float = 0.0
    rescore_s: float = 0.0
    fetch_s: float = 0.0
    total_s: float = 0.0
    index_s: float | None = None  # of search + rescore, the time in a remote index tier


@dataclass(frozen=True)
class QueryResult:
    """One query's hits (best first) and how they were found."""

    hits: list[Hit]
    variant: str
    rescored: bool
    stages: list[str]
    truncated: bool  # the query was cut (characters or tokens) before embedding
    timings: StageTimings = field(default_factory=StageTimings)
    mode: str = "asymmetric"
    weight: float | None = None  # fused: w of the asymmetric cosine


@dataclass(frozen=True)
class Embeddings:
    vectors: npt.NDArray[np.float32]  # (n, dim or dimensions), L2-normalized
    n_tokens: int
    truncated: list[bool]
