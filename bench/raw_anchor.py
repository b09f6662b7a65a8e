"""The raw anchor: what ten lines of tokenizers + onnxruntime + FAISS do, no tandem on the path.

This is the query path's physical limit on this machine: the same ONNX file
the server runs (or the plain fp32 export a user gets from torch), the
tokenizer, a flat inner-product FAISS index over the same document vectors,
and nothing else. Single queries measure latency; length-sorted batches of 8
and 32 measure throughput. Imports here are tokenizers, onnxruntime, faiss and
numpy only, so nothing tandem does can slow the anchor down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

BATCHES = (8, 32)


def run(
    model_file: Path,
    tokenizer_file: Path,
    max_length: int,
    vectors: npt.NDArray[np.float32] | None,
    queries: Sequence[str],
    k: int,
    n_single: int,
    n_batched: int,
    prefix: str = "",
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> dict[str, Any]:
    """p50/p99 of single queries and q/s of length-sorted batches; ``vectors=None``: embed only.

    FAISS searches on one OpenMP thread here, whatever the process had set:
    its default team (every core) spins after each batched search and takes
    the cores from onnxruntime's next run (measured on 2 cores: batches of 32
    at 816-920 q/s against 1,070-1,200 q/s with one thread). The anchor is the
    faster setting, in every round.
    """
    session = ort.InferenceSession(str(model_file), providers=list(providers))
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding()
    index = None
    if vectors is not None:
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    texts = [prefix + q for q in queries]
    # The first output: an aligned student also outputs its native vector.
    first_output = [session.get_outputs()[0].name]

    def one(batch: Sequence[str]) -> None:
        encodings = tokenizer.encode_batch(list(batch))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (embedded,) = session.run(first_output, {"input_ids": ids, "attention_mask": mask})
        if index is not None:
            index.search(np.ascontiguousarray(embedded, dtype=np.float32), k)

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        out = _measure(one, texts, n_single, n_batched)
    finally:
        faiss.omp_set_num_threads(threads)
    return {"model": model_file.name, "search": index is not None} | out


def _measure(
    one: Callable[[Sequence[str]], None], texts: list[str], n_single: int, n_batched: int
) -> dict[str, Any]:
    """Time ``one`` on single texts (after a warm-up), then on length-sorted batches."""
    for text in texts[:10]:
        one([text])
    singles = []
    cpu0 = time.process_time()
    for i in range(n_single):
        started = time.perf_counter()
        one([texts[i % len(texts)]])
        singles.append((time.perf_counter() - started) * 1e3)
    cpu_ms = (time.process_time() - cpu0) * 1e3 / n_single
    out: dict[str, Any] = {
        "queries": n_single,
        "p50_ms": float(np.percentile(singles, 50)),
        "p99_ms": float(np.percentile(singles, 99)),
        "qps_single": n_single / (sum(singles) / 1e3),
        "cpu_ms_per_query": cpu_ms,
    }
    for size in BATCHES:
        pool = [texts[i % len(texts)] for i in range(max(size, n_batched))]
        pool.sort(key=len)  # length-sorted: a batch pads to similar lengths
        started = time.perf_counter()
        for start in range(0, len(pool), size):
            one(pool[start : start + size])
        out[f"qps_batch_{size}"] = len(pool) / (time.perf_counter() - started)
    out["qps_best"] = max(out["qps_single"], *(out[f"qps_batch_{s}"] for s in BATCHES))
    return out
