"""One settings object for the server, read once at startup.

Every field is a ``tandem serve`` flag and a ``TANDEM_<FIELD>`` environment
variable (pydantic-settings; flags win over the environment). The CLI hands
the resolved settings to uvicorn workers through the environment, so a worker
started by ``tandem serve`` and one started by ``uvicorn --factory
tandem.server.app:create_app_from_env`` read exactly the same configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "TANDEM_"
RescoreMode = Literal["auto", "always", "never"]
SearchMode = Literal["asymmetric", "fused"]


class ServerSettings(BaseSettings):
    """Configuration of one server process (and of each of its workers)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # What to serve.
    bundle: Path | None = Field(
        None,
        description="bundle root (with a `current` link) or one version folder "
        "(required with the faiss backend)",
    )
    student: str = Field(description="query encoder: artifact folder, aligned name or model spec")
    variant: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="variants to serve (repeat the flag, or comma-separated in the env, e.g. "
        "`bin-768-hnsw,f32-768`); the first is the default; empty serves every variant",
    )
    backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="where the index lives: faiss (the bundle, in this process) or milvus "
        "(a collection pushed with `tandem index push`; this process holds no index)",
    )
    milvus_uri: str | None = Field(
        None, description="Milvus URI (http://host:19530) or a local milvus-lite .db path"
    )
    milvus_token: SecretStr | None = Field(
        None, description="Milvus token (user:password or an API key); from a Secret in k8s"
    )
    collection: str | None = Field(
        None, description="Milvus alias (or collection) the pushed bundle is served under"
    )
    allow_unaligned: bool = Field(
        False, description="serve a student that is not aligned to the bundle's teacher"
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="student weights. auto serves int8 once `tandem models guard` found its "
        "nDCG@10 within 0.005 of fp32 on real judgments, else fp32. int8 runs one query per "
        "ONNX run, so a query's vector never depends on its batch mates",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="student execution provider; auto picks CUDA when onnxruntime has it "
        "(`cuda` in the GPU image)",
    )
    faiss_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where FAISS indexes live; auto uses a GPU when GPU faiss sees one"
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="onnxruntime intra-op threads per worker (default: all cores); set it to "
        "the container's CPU limit (onnxruntime counts the node's cores, not the cgroup's)",
    )
    faiss_threads: int = Field(
        1,
        ge=1,
        description="OpenMP threads per FAISS search; requests already run in parallel, and "
        "an OpenMP team per single-query search costs more than it saves",
    )
    onnx_spinning: bool = Field(
        True,
        description="let onnxruntime's threads spin between the parallel sections of a run "
        "(they stop when it returns): waking sleeping threads costs every section (measured: "
        "single-query embed 2.7 vs 3.5 ms on a 2-core machine)",
    )

    # Network.
    host: str = Field("0.0.0.0", description="interface to bind")
    port: int = Field(8080, ge=0, le=65535, description="port to bind")
    workers: int = Field(
        1,
        ge=1,
        description="uvicorn processes; each loads the student, indexes are shared via mmap. "
        "On Kubernetes prefer more pods over more workers",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Bearer key for everything but probes and /metrics; also enables "
        "/admin/reload. Prefer the env variable (flags show up in ps); from a Secret on Kubernetes",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="least severe log level written"
    )
    log_queries: bool = Field(
        False,
        description="log the text of every query and embeddings input (at info); off by "
        "default because queries may hold personal data",
    )
    served_model_name: str | None = Field(
        None, description="model id for /v1/models and /v1/embeddings (default: the student name)"
    )
    console: bool = Field(
        True, description="serve the search console (a page to try queries) at / and /console"
    )

    # Micro-batching and admission (TEI's knobs).
    max_batch_size: int = Field(
        32, ge=1, description="most queries in one ONNX run: throughput vs. latency; raise on a GPU"
    )
    max_batch_tokens: int = Field(
        8192, ge=16, description="padded-token budget of one ONNX run (longest x count)"
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="longest a query waits for others to share its batch (only under "
        "concurrent load: a lone client never waits)",
    )
    inline_lone: bool = Field(
        True,
        description="run a lone query on the event loop when no other request is in flight "
        "and at most 4 clients are connected (skips the hop to the encoder thread; "
        "measured: 0.1-0.3 ms off a 1.7 ms query)",
    )
    hot_routes: bool = Field(
        True,
        description="answer well-formed JSON posts to /search, /search/batch and /v1/embeddings "
        "without FastAPI's router (same answers; measured: 0.17 ms off a 1.9 ms query, about 8 % "
        "more queries/s); anything else goes through FastAPI as before",
    )
    max_queue: int = Field(
        256,
        ge=1,
        description="queries admitted at once per worker; beyond it requests get 429 + Retry-After",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="per-request deadline; a request past it gets 503. SIGTERM drains for this "
        "long + 1 s",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 429 and 503")

    # Request limits and search defaults.
    max_k: int = Field(1000, ge=1, le=1000, description="largest k a request may ask for")
    max_batch_queries: int = Field(64, ge=1, description="most inputs in one batch request")
    max_input_chars: int = Field(
        20_000, ge=16, description="characters per query kept before tokenization"
    )
    truncate: bool = Field(
        True, description="truncate over-long queries and say so; false answers 422 instead"
    )
    max_body_bytes: int = Field(4 << 20, ge=1024, description="largest request body accepted")
    oversample: int = Field(4, ge=1, le=50, description="default candidates per result to rescore")
    rescore: RescoreMode = Field(
        "auto", description="default rescoring; auto rescores every variant but full-dim f32"
    )
    ef_search: int = Field(64, ge=1, description="HNSW efSearch (raised to the candidate count)")
    mode: SearchMode = Field(
        "asymmetric",
        description="default search mode; fused also searches the bundle's student view",
    )
    fused_weight: float | None = Field(
        None, ge=0.0, le=1.0, description="fused w (default: the bundle's student view's)"
    )
    filter_exact_max: int = Field(
        20_000, ge=0, description="filters matching at most this many docs are scored exactly"
    )
    max_candidates: int = Field(
        10_000, ge=1, description="most first-pass candidates rescored per query (k x oversample)"
    )

    # Hot swap.
    control_dir: Path | None = Field(
        None, description="folder through which workers share reload requests (set by the CLI)"
    )
    reload_poll_s: float = Field(1.0, gt=0, description="how often workers look at control_dir")
    watch_current: bool = Field(
        False,
        description="reload whenever `current` points at a new version: every replica loads, "
        "verifies, warms and swaps it without dropping a request",
    )
    verified_version_dir: Path | None = Field(
        None, description="internal: version folder the CLI already verified"
    )

    @field_validator("variant", mode="before")
    @classmethod
    def _split_variants(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("api_key", "milvus_token", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _backend_needs(self) -> ServerSettings:
        if self.backend == "faiss" and self.bundle is None:
            raise ValueError("bundle is required with the faiss backend (--bundle PATH)")
        if self.backend == "milvus" and not (self.milvus_uri and self.collection):
            raise ValueError("the milvus backend needs --milvus-uri URI and --collection NAME")
        return self

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    def milvus_target(self) -> tuple[str, str, str | None]:
        """(URI, collection, token) of the Milvus backend; only with ``backend="milvus"``."""
        if self.milvus_uri is None or self.collection is None:
            raise ValueError("the Milvus backend needs milvus_uri and collection")
        token = self.milvus_token.get_secret_value() if self.milvus_token else None
        return self.milvus_uri, self.collection, token

    def redacted(self) -> dict[str, Any]:
        """The effective configuration, fit for a log line (the API key never appears)."""
        data = self.model_dump(mode="json")
        data["api_key"] = "**********" if self.api_key is not None else None
        data["milvus_token"] = "**********" if self.milvus_token is not None else None
        return data

    def to_env(self) -> dict[str, str]:
        """TANDEM_* variables that reproduce these settings in a worker process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="python").items():
            key = ENV_PREFIX + name.upper()
            if value is None:
                continue
            if isinstance(value, SecretStr):
                env[key] = value.get_secret_value()
            elif isinstance(value, list):
                env[key] = ",".join(value)
            elif isinstance(value, bool):
                env[key] = "true" if value else "false"
            elif isinstance(value, dict):
                env[key] = json.dumps(value)
            else:
                env[key] = str(value)
        return env
