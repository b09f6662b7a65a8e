"""Query-encoder cost: the student against the teacher it replaces at query time.

Single-query latency (what a user waits for) and batched throughput of each
ONNX encoder in fp32 and int8, measured in one process, one after the other,
on the same query texts. The teacher in fp32 is the reference every speed-up
is a ratio to.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tandem.models.card import ModelCard
from tandem.models.encoder import Encoder

PRECISIONS = ("fp32", "int8")


def measure(encoder: Encoder, queries: list[str], batch: int) -> dict[str, float]:
    """p50/p99 of one query at a time, and queries/s in batches of ``batch``."""
    encoder.encode(queries[:8], "query")  # warm up
    singles = []
    cpu0 = time.process_time()
    for query in queries:
        started = time.perf_counter()
        encoder.encode([query], "query")
        singles.append((time.perf_counter() - started) * 1e3)
    cpu_ms = (time.process_time() - cpu0) * 1e3 / len(queries)
    started = time.perf_counter()
    for i in range(0, len(queries), batch):
        encoder.encode(queries[i : i + batch], "query")
    batched_s = time.perf_counter() - started
    return {
        "p50_ms": float(np.percentile(singles, 50)),
        "p99_ms": float(np.percentile(singles, 99)),
        "cpu_ms": cpu_ms,
        "batched_qps": len(queries) / batched_s,
    }


def run(encoders: list[tuple[str, Path]], queries: list[str], batch: int = 32) -> dict[str, Any]:
    """Every (role, folder) in fp32 and, where the guard accepted one, int8."""
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for role, folder in encoders:
        card = ModelCard.load(folder)
        for precision in PRECISIONS:
            if precision == "int8" and card.int8 is None:
                skipped.append(f"{card.name} int8 (no variant accepted by the quantization guard)")
                continue
            encoder = Encoder(folder, precision=precision, device="cpu")  # type: ignore[arg-type]
            row: dict[str, Any] = {"role": role, "model": card.name, "precision": precision}
            rows.append(row | measure(encoder, queries, batch))
            del encoder
    teacher = {r["precision"]: r for r in rows if r["role"] == "teacher"}
    for row in rows:
        ref = teacher.get("fp32")
        same = teacher.get(row["precision"])
        row["speedup_vs_teacher_fp32"] = ref["p50_ms"] / row["p50_ms"] if ref else float("nan")
        row["speedup_vs_teacher_same"] = same["p50_ms"] / row["p50_ms"] if same else float("nan")
    return {"queries": len(queries), "batch": batch, "rows": rows, "skipped": skipped}
