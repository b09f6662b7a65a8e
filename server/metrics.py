"""Prometheus metrics, named and split the way TEI does it (prefix ``tandem_``).

With several uvicorn workers each process keeps its own counters; when
``PROMETHEUS_MULTIPROC_DIR`` is set (``tandem serve --workers N`` sets it)
prometheus-client writes them to memory-mapped files there and ``/metrics``
aggregates every worker's files, so any worker answers for all of them.
Gauges say how they aggregate: queue depth sums over live workers, info
gauges take the max over live workers. A worker marks itself dead on
shutdown so its live gauges stop counting.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Sub-millisecond resolution at the bottom: a student query costs 1-5 ms on a CPU.
LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The server's metric objects, registered in a registry of their own.

    A registry per app (rather than prometheus-client's global one) lets
    several apps live in one test process without colliding.
    """

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tandem_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "tandem_request_duration_seconds",
            "total time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "tandem_queue_duration_seconds",
            "time a query waited for its batch to start",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokenize_seconds = Histogram(
            "tandem_tokenize_duration_seconds",
            "tokenization time per request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.embed_seconds = Histogram(
            "tandem_embed_duration_seconds",
            "student inference time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.search_seconds = Histogram(
            "tandem_search_duration_seconds",
            "first-pass search time per request",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rescore_seconds = Histogram(
            "tandem_rescore_duration_seconds",
            "full-precision rescoring time per request",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.index_seconds = Histogram(
            "tandem_index_remote_duration_seconds",
            "time per request spent in a remote index tier (Milvus: search and vector fetch)",
            ["backend", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.mode_seconds = Histogram(
            "tandem_search_mode_duration_seconds",
            "search + rescoring time per request, by search mode (asymmetric, fused)",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tandem_batch_size", "queries per ONNX run", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "tandem_batch_tokens",
            "tokens the forward pass of a micro-batch ran, padding included "
            "(int8 runs each row unpadded)",
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.inline_runs = Counter(
            "tandem_inline_runs",
            "lone one-query runs done on the event loop (no hop to the encoder thread)",
            registry=r,
        )
        self.batch_failures = Counter(
            "tandem_batch_failures", "ONNX runs that failed, by cause", ["cause"], registry=r
        )
        self.rejected = Counter(
            "tandem_rejected", "requests refused before search, by reason", ["reason"], registry=r
        )
        self.queue_depth = Gauge(
            "tandem_queue_depth",
            "queries waiting for a batch",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.in_flight = Gauge(
            "tandem_in_flight",
            "queries admitted and not yet answered",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.ready = Gauge(
            "tandem_ready", "1 when the worker is ready", multiprocess_mode="livemin", registry=r
        )
        self.bundle_info = Gauge(
            "tandem_bundle_info",
            "the bundle being served (1) and those it replaced (0)",
            ["version", "teacher", "variants"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.bundle_docs = Gauge(
            "tandem_bundle_docs",
            "documents in the served bundle",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.variant_bytes = Gauge(
            "tandem_bundle_variant_bytes",
            "index size of each served variant",
            ["variant", "device"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_info = Gauge(
            "tandem_model_info",
            "the query encoder being served",
            ["role", "name", "fingerprint", "precision", "provider"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.reloads = Counter(
            "tandem_reloads", "bundle reload attempts by outcome", ["outcome"], registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this process's registry, or every worker's files."""
        if self.multiprocess:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def mark_dead(self) -> None:
        """Drop this process's live gauges from the shared files (call on shutdown)."""
        path = multiprocess_dir()
        if self.multiprocess and path:
            prom_multiprocess.mark_process_dead(os.getpid(), path)
