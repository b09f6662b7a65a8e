"""Latency and throughput of ``POST /search`` next to the same work done in-process.

Starts ``tandem serve`` on 127.0.0.1 (a free port), warms it, then measures:
- over HTTP: p50/p99 latency and QPS at each concurrency (closed loop: each
  of C clients sends its next query when the previous answer arrives);
- in-process: student embedding + FAISS first pass (+ rescoring) + document
  fetch for the same queries, one at a time and in batches of 32.

Bounded: a fixed number of requests per setting. The client runs on the same
machine, so on a small box its CPU use is part of what is measured: ApacheBench
(``ab``, C, keep-alive, one fixed query) is used when installed because a
Python client at concurrency 32 costs as much CPU as the server; otherwise an
httpx asyncio client cycles through the sample queries.

    python bench/serve_latency.py --bundle ROOT --student demo-student --variant f32-768
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import faiss
import httpx
import numpy as np

from indexer.bundle import open_bundle
from indexer.variants import search_variant
from models.artifacts import resolve_artifact
from models.encoder import Encoder

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.array(latencies) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


async def closed_loop(
    url: str, queries: list[str], body: dict, concurrency: int, total: int
) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def worker(w: int) -> None:
            for i in range(w, total, concurrency):
                started = time.perf_counter()
                response = await client.post(
                    "/search", json=body | {"query": queries[i % len(queries)]}
                )
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    return {
        "concurrency": concurrency,
        "requests": total,
        "p50_ms": p50,
        "p99_ms": p99,
        "qps": total / wall,
        "statuses": statuses,
    }


def apache_bench(url: str, body: dict, concurrency: int, total: int) -> dict:
    """The same measurement with ``ab -k`` (one fixed query; content length varies, so
    ab's "Failed requests (Length)" count is meaningless and ignored)."""
    with open(Path(os.environ.get("TMPDIR", "/tmp")) / "tandem-bench-body.json", "w") as f:
        json.dump(body, f)
    command = [
        "ab",
        "-q",
        "-k",
        "-n",
        str(total),
        "-c",
        str(concurrency),
        "-p",
        f.name,
        "-T",
        "application/json",
        f"{url}/search",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)

    def number(pattern: str) -> float:
        match = re.search(pattern, out, re.MULTILINE)
        return float(match.group(1)) if match else float("nan")

    return {
        "concurrency": concurrency,
        "requests": total,
        "client": "ab",
        "p50_ms": number(r"^\s+50%\s+(\d+)"),
        "p99_ms": number(r"^\s+99%\s+(\d+)"),
        "qps": number(r"Requests per second:\s+([\d.]+)"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def in_process(args: argparse.Namespace, queries: list[str]) -> list[dict]:
    faiss.omp_set_num_threads(1)  # as the server's search threads do
    student = resolve_artifact(args.student, export_if_missing=False)
    encoder = Encoder(student, device="cpu", threads=args.threads)
    bundle = open_bundle(Path(args.bundle))
    spec, index = bundle.spec(args.variant), bundle.index(args.variant)

    def run(batch: list[str]) -> None:
        vectors = encoder.encode(batch, "query")
        k_first = args.k * args.oversample if args.rescore else args.k
        _scores, ids = search_variant(
            spec, index, vectors, min(k_first, bundle.n_docs), 64 if spec.hnsw else None
        )
        for query, row in zip(vectors, ids, strict=True):
            cand = np.unique(row[row >= 0])
            if args.rescore:
                scores = np.asarray(bundle.vectors[cand], dtype=np.float32) @ query
                cand = cand[np.argsort(-scores)[: args.k]]
            bundle.documents([int(i) for i in cand[: args.k]])

    for q in queries[:20]:
        run([q])
    results = []
    for size in (1, 32):
        latencies = []
        started = time.perf_counter()
        n = 0
        while n < args.requests:
            batch = [queries[(n + j) % len(queries)] for j in range(size)]
            t0 = time.perf_counter()
            run(batch)
            latencies.append(time.perf_counter() - t0)
            n += size
        wall = time.perf_counter() - started
        p50, p99 = percentiles(latencies)
        results.append(
            {
                "batch": size,
                "queries": n,
                "p50_ms_per_call": p50,
                "p99_ms_per_call": p99,
                "qps": n / wall,
            }
        )
    bundle.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--variant", default="f32-768")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rescore", action="store_true")
    parser.add_argument("--oversample", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--client", choices=["auto", "httpx"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (both)")
    args = parser.parse_args()
    queries = [json.loads(line)["text"] for line in open(REPO / "samples" / "queries.jsonl")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"tandem-bench-{port}.log", "wb")
    command = [
        sys.executable,
        "-c",
        "from tandem.cli import app; app()",
        "serve",
        "--bundle",
        args.bundle,
        "--student",
        args.student,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--log-level",
        "warning",
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}; see {log.name}")
            time.sleep(0.2)
        body = {
            "k": args.k,
            "variant": args.variant,
            "rescore": args.rescore,
            "oversample": args.oversample,
            "include_text": True,
        }
        asyncio.run(closed_loop(url, queries, body, 4, 100))  # warm-up
        levels = [int(c) for c in args.concurrency.split(",")]
        if shutil.which("ab") and args.client != "httpx":
            queries = queries[:1]  # ab repeats one body: in-process gets the same query
            fixed = body | {"query": queries[0]}
            http = [apache_bench(url, fixed, c, args.requests) for c in levels]
        else:
            http = [asyncio.run(closed_loop(url, queries, body, c, args.requests)) for c in levels]
        batches = httpx.get(f"{url}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    local = in_process(args, queries)
    sizes = [line for line in batches.splitlines() if line.startswith("tandem_batch_size_")]
    print(json.dumps({"http": http, "in_process": local, "batch_size": sizes[-3:]}, indent=1))


if __name__ == "__main__":
    main()
