"""The query path: the raw anchor, tandem over HTTP, tandem without HTTP, a naive server.

- the raw anchor (``bench/raw_anchor.py``): tokenizers + onnxruntime + a flat
  FAISS index, no tandem code, on the ONNX file the server serves and on the
  plain fp32 export; the query path's physical limit on this machine, and the
  head of every ratio;
- tandem without HTTP: the aligned student embeds, then the server's own
  funnel (``tandem.bundle.search.search`` + the server's document fetch) runs
  on the same bundle and queries; one query at a time and in batches of 32
  (the server's largest micro-batch);
- the teacher as query encoder: the same in-process path with the teacher in
  place of the student (symmetric search, what the student replaces);
- ``tandem serve`` over HTTP at each concurrency (closed loop);
- the naive FastAPI + sentence-transformers server (``bench/naive_server.py``)
  and ``tandem serve`` over the *same* 384-d vectors of the unaligned student,
  so that comparison is the same model doing the same search.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tandem.bundle.format import open_bundle
from tandem.bundle.search import SearchPlan, search
from tandem.models.card import ModelCard, Precision
from tandem.models.encoder import Encoder
from tandem.server.search import with_documents
from tandem.server.settings import ServerSettings
from tandem.server.state import load_bundle

from bench import loadgen, raw_anchor
from bench.inputs import Workspace, export_for_naive
from bench.profile import profile_server
from bench.servers import listen_args, tandem_server
from tests.support.server import HOST, ServerProcess, free_port, running

TIMING_HEADERS = ("x-queue-time", "x-embed-time", "x-search-time", "x-total-time")
K = 10
BATCH = 32  # the server's default max_batch_size


@dataclass(frozen=True)
class Load:
    """How much traffic each HTTP setting gets: concurrency levels, requests, a time cap."""

    levels: tuple[int, ...]
    requests: dict[int, int]
    max_seconds: float
    warmup: int
    # tandem's own routes also run past its batch size (two batches of 32
    # alternate: one forms while the other runs); at C=32 every client is in
    # the one batch, so the cores idle while its answers go out.
    saturation: int = 64

    @property
    def tandem_levels(self) -> tuple[int, ...]:
        """The levels tandem's own routes run: the common ones, then saturation."""
        return (*self.levels, self.saturation)


# 1,000 single queries: a p99 over 300 is the third-slowest request, one stall from a miss.
FULL_LOAD = Load((1, 8, 32), {1: 1000, 8: 800, 32: 1600, 64: 3200}, 60.0, 100)
QUICK_LOAD = Load((1, 8, 32), {1: 40, 8: 80, 32: 128, 64: 128}, 10.0, 20)
FULL_ROUNDS, QUICK_ROUNDS = 3, 2  # quick: 2, so CI runs the interleaving too


def in_process(
    encoder: Encoder, bundle_dir: Path, variant: str, queries: list[str], n_single: int
) -> dict[str, Any]:
    """Embed + funnel with no HTTP and no batcher: p50/p99 of single queries, batched q/s."""
    faiss.omp_set_num_threads(1)  # as the server's search threads (faiss_threads=1)
    loaded = load_bundle(
        bundle_dir,
        encoder.card,
        [variant],
        allow_unaligned=False,
        verify=False,
        faiss_device="cpu",
    )
    plan = SearchPlan(
        variant=variant,
        k=K,
        rescore=False,  # the server's "auto": an exact full-dim variant is not rescored
        oversample=4,
        ef_search=64,
        filter=None,
        filter_exact_max=0,
    )
    try:

        def one(batch: list[str]) -> None:
            with_documents(loaded, search(loaded.target, encoder.encode(batch, "query"), plan))

        for query in queries[:10]:
            one([query])
        singles = []
        cpu0 = time.process_time()
        for i in range(n_single):
            started = time.perf_counter()
            one([queries[i % len(queries)]])
            singles.append((time.perf_counter() - started) * 1e3)
        cpu_ms = (time.process_time() - cpu0) * 1e3 / n_single
        n_batched = max(BATCH, (n_single // BATCH) * BATCH)
        started = time.perf_counter()
        for i in range(0, n_batched, BATCH):
            one([queries[(i + j) % len(queries)] for j in range(BATCH)])
        batched_s = time.perf_counter() - started
    finally:
        loaded.close()
    return {
        "encoder": encoder.name,
        "queries": n_single,
        "p50_ms": float(np.percentile(singles, 50)),
        "p99_ms": float(np.percentile(singles, 99)),
        "qps_single": n_single / (sum(singles) / 1e3),
        "cpu_ms_per_query": cpu_ms,
        "qps_batched": n_batched / batched_s,
        # The limit is the better of the two: batching is not always faster on a small CPU.
        "qps_limit": max(n_single / (sum(singles) / 1e3), n_batched / batched_s),
    }


def measure_server(
    server: ServerProcess,
    name: str,
    key: str,
    path: str,
    bodies: list[dict[str, Any]],
    load: Load,
    levels: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """One server's report entry: its startup, warm RSS and every load level on ``path``."""
    return {
        "name": name,
        "key": key,
        "startup_s": server.startup_s,
        "rss_mib": server.rss_mib(),
        "levels": http_levels(server, path, bodies, load, levels=levels),
    }


def http_levels(
    server: ServerProcess,
    path: str,
    bodies: list[dict[str, Any]],
    load: Load,
    per_request: int = 1,
    levels: tuple[int, ...] | None = None,
) -> list[dict[str, Any]]:
    """Warm up, then one closed-loop run per concurrency level, with server CPU per request.

    ``levels`` defaults to the load's common levels.
    """
    requests = [
        loadgen.encode_post(HOST, server.port, path, json.dumps(b).encode()) for b in bodies
    ]
    loadgen.closed_loop(HOST, server.port, requests, 4, load.warmup, load.max_seconds)
    results = []
    for level in levels or load.levels:
        cpu0 = server.cpu_seconds()
        run = loadgen.closed_loop(
            HOST,
            server.port,
            requests,
            level,
            load.requests[level],
            load.max_seconds,
            timing_headers=TIMING_HEADERS,
        )
        served = max(run.ok, 1)
        results.append(
            run.as_dict()
            | {
                "items_per_s": run.qps * per_request,
                "server_cpu_ms": (server.cpu_seconds() - cpu0) * 1e3 / served,
                "client_cpu_ms": run.client_cpu_s * 1e3 / served,
            }
        )
    return results


def naive_server(ws: Workspace, symmetric: Path) -> ServerProcess:
    """``bench/naive_server.py`` under uvicorn, over the symmetric bundle's docs and vectors."""
    docs, vectors = export_for_naive(symmetric, ws.work / "naive")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.naive_server:app",
        *listen_args(port),
        "--no-access-log",
    ]
    env = {
        "NAIVE_MODEL": str(ws.models.base_student_st),
        "NAIVE_DOCS": str(docs),
        "NAIVE_VECTORS": str(vectors),
        "HF_HUB_OFFLINE": "1",
    }
    return ServerProcess("naive", command, port, ws.work / "naive.log", "/openapi.json", env)


PLAIN_FILE = "model.plain.onnx"  # the unfused fp32 export, kept beside an optimized graph


def served_precision(card: ModelCard) -> Precision:
    """What ``tandem serve`` runs with its default settings for this student."""
    default = ServerSettings.model_fields["precision"].default
    return card.serving_precision if default == "auto" else default


def anchor_files(student: Path) -> dict[str, Path]:
    """The ONNX file the server serves by default, and the plain fp32 export."""
    card = ModelCard.load(student)
    plain = student / PLAIN_FILE
    return {
        "served": student / card.model_file(served_precision(card)),
        "plain": plain if plain.exists() else student / card.onnx_file,
    }


def anchors(ws: Workspace, load: Load) -> dict[str, Any]:
    """The raw loop on the served file and on the plain export; embed-only on the served one."""
    card = ModelCard.load(ws.models.student)
    with open_bundle(ws.bundle) as bundle:
        vectors = np.asarray(bundle.vectors, dtype=np.float32)  # (n_docs, dim)
    n_single, n_batched = load.requests[1], load.requests[32]
    common = {
        "tokenizer_file": ws.models.student / card.tokenizer_file,
        "max_length": card.max_length,
        "queries": ws.queries,
        "k": K,
        "n_single": n_single,
        "n_batched": n_batched,
        "prefix": card.query_prefix,
    }
    files = anchor_files(ws.models.student)
    out: dict[str, Any] = {
        name: raw_anchor.run(model_file=path, vectors=vectors, **common)  # type: ignore[arg-type]
        for name, path in files.items()
    }
    out["served_embed"] = raw_anchor.run(model_file=files["served"], vectors=None, **common)  # type: ignore[arg-type]
    out["served_precision"] = served_precision(card)
    out["serving_reason"] = card.serving_reason()
    return out


def median_of(runs: list[Any]) -> Any:
    """Element-wise median of same-shaped results (numbers; dicts and lists recursively).

    Non-numeric leaves (names, file names) are taken from the first run.
    """
    first = runs[0]
    if isinstance(first, bool) or not isinstance(first, int | float | dict | list):
        return first
    if all(r == first for r in runs):
        return first  # counts such as a concurrency level stay what they are
    if isinstance(first, dict):
        return {
            k: median_of([r[k] for r in runs]) if all(k in r for r in runs) else v
            for k, v in first.items()
        }
    if isinstance(first, list):
        return [median_of([r[i] for r in runs]) for i in range(len(first))]
    return float(np.median([float(r) for r in runs]))


def run(ws: Workspace, load: Load, profile_seconds: float = 0.0, rounds: int = 1) -> dict[str, Any]:
    """Section 1: every row of the query-path tables, plus an optional profile of tandem.

    The raw anchor and tandem's own HTTP rows are measured in ``rounds``
    interleaved rounds (raw, then HTTP, then raw again ...) and each number is
    the median over rounds: on a shared machine the speed drifts over minutes,
    and a ratio of two numbers taken minutes apart would measure the drift.
    """
    with open_bundle(ws.bundle) as bundle:
        n_docs, dim, variant = bundle.n_docs, bundle.dim, f"f32-{bundle.dim}"
    queries = ws.queries
    n_single = load.requests[1]
    raw = anchors(ws, load)
    student = Encoder(ws.models.student, raw["served_precision"], device="cpu")
    teacher = Encoder(ws.models.teacher, device="cpu")
    limit = in_process(student, ws.bundle, variant, queries, n_single)
    teacher_row = in_process(teacher, ws.bundle, variant, queries, max(20, n_single // 2))
    del student, teacher

    body = {"k": K, "variant": variant}
    bodies = [body | {"query": q} for q in queries]
    out: dict[str, Any] = {
        "bundle": str(ws.bundle),
        "n_docs": n_docs,
        "dim": dim,
        "variant": variant,
        "k": K,
        "n_queries": len(queries),
        "student": ModelCard.load(ws.models.student).name,
        "load": {
            "levels": load.levels,
            "tandem_levels": load.tandem_levels,
            "requests": load.requests,
            "max_s": load.max_seconds,
        },
        "raw": raw,
        "in_process": limit,
        "teacher_in_process": teacher_row,
        "servers": [],
    }
    server = tandem_server(ws.bundle, ws.models.student, ws.work, "tandem")
    ids_only = [b | {"fields": ["id", "score"]} for b in bodies]
    inputs = [{"input": q} for q in queries]
    routes = (
        (f"tandem /search ({out['student']}, {variant})", "tandem", "/search", bodies),
        ("tandem /search, ids and scores only", "tandem_ids", "/search", ids_only),
        ("tandem /v1/embeddings (one input)", "tandem_embeddings", "/v1/embeddings", inputs),
    )
    with running(server):
        raws, measured = [raw], []
        for round_ in range(rounds):
            if round_ > 0:
                raws.append(anchors(ws, load))
            measured.append(
                [
                    measure_server(server, name, key, path, b, load, load.tandem_levels)
                    for name, key, path, b in routes
                ]
            )
        out["raw"] = median_of(raws)
        out["servers"] += median_of(measured)
        out["rounds"] = [
            {
                "raw_p50_ms": r["served"]["p50_ms"],
                "raw_qps_best": r["served"]["qps_best"],
                "search_c1_p50_ms": m[0]["levels"][0]["p50_ms"],
                "search_best_qps": max(lv["qps"] for lv in m[0]["levels"]),
            }
            for r, m in zip(raws, measured, strict=True)
        ]
        if profile_seconds > 0:
            out["profiles"] = {
                c: profile_server(
                    server, "/search", bodies, c, profile_seconds, ws.work / f"profile-search-{c}"
                )
                for c in (1, 32)
            }

    symmetric = ws.symmetric()
    base_name = ModelCard.load(ws.models.base_student).name
    sym_body = {"k": K}
    sym_bodies = [sym_body | {"query": q} for q in queries]
    server = tandem_server(symmetric, ws.models.base_student, ws.work, "tandem-symmetric")
    with running(server):
        out["servers"].append(
            measure_server(
                server,
                f"tandem /search ({base_name}, f32-384, same vectors as naive)",
                "tandem_symmetric",
                "/search",
                sym_bodies,
                load,
            )
        )
    server = naive_server(ws, symmetric)
    with running(server):
        out["servers"].append(
            measure_server(
                server,
                f"naive FastAPI + sentence-transformers ({base_name}, flat 384-d)",
                "naive",
                "/search",
                sym_bodies,
                load,
            )
        )
    return out
