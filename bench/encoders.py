"""Query-encoder latency of every ONNX variant, single query and batched.

Usage: python -m bench.encoders [--queries 200] [--out BENCHMARKS-encoders.md]
Reports p50/p99 single-query latency and batched throughput for the teacher
and the student in fp32 and int8, with ratios to the fp32 teacher measured in
the same run (absolute times on shared machines are noisy; ratios are what we
track).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime
import typer

from models.artifacts import find_artifact, resolve_artifact
from models.encoder import Encoder

REPO = Path(__file__).resolve().parent.parent
QUERIES = REPO.parent / "shared" / "data" / "scifact" / "queries.jsonl"
FALLBACK_QUERIES = REPO / "samples" / "queries.jsonl"


def _queries(n: int) -> list[str]:
    path = QUERIES if QUERIES.exists() else FALLBACK_QUERIES
    texts = [json.loads(line)["text"] for line in path.open()]
    return (texts * (n // len(texts) + 1))[:n]


def _measure(encoder: Encoder, queries: list[str], batch: int) -> dict[str, float]:
    encoder.encode(queries[:8], "query")  # warm up
    singles = []
    for q in queries:
        start = time.perf_counter()
        encoder.encode([q], "query")
        singles.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        encoder.encode(queries[i : i + batch], "query")
    batched_s = time.perf_counter() - start
    return {
        "p50_ms": float(np.percentile(singles, 50)),
        "p99_ms": float(np.percentile(singles, 99)),
        "batched_qps": len(queries) / batched_s,
    }


def main(
    queries: Annotated[int, typer.Option(help="Queries per measurement.")] = 200,
    batch: Annotated[int, typer.Option(help="Batch size for the batched run.")] = 32,
    student: Annotated[str, typer.Option(help="Aligned student name, if any.")] = "demo-student",
    out: Annotated[Path, typer.Option(help="Markdown table to write.")] = Path(
        "bench/results/encoders.md"
    ),
) -> None:
    texts = _queries(queries)
    specs = ["all-mpnet-base-v2", "all-MiniLM-L6-v2"]
    if find_artifact(student):
        specs.append(student)
    rows = []
    for spec in specs:
        folder = resolve_artifact(spec)
        for precision in ("fp32", "int8"):
            try:
                encoder = Encoder(folder, precision=precision, device="cpu")  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - a missing int8 variant is reported, not fatal
                continue
            rows.append(
                {"model": encoder.name, "precision": precision, **_measure(encoder, texts, batch)}
            )
    base = next(r for r in rows if r["model"] == "all-mpnet-base-v2" and r["precision"] == "fp32")
    lines = [
        f"Machine: {platform.machine()}, onnxruntime {onnxruntime.__version__}, {queries} "
        f"SciFact queries, batch {batch}. Command: `python -m bench.encoders`.",
        "",
        "| model | precision | single p50 ms | single p99 ms | batched q/s "
        "| speed-up vs teacher fp32 (p50) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['batched_qps']:.0f} | {base['p50_ms'] / r['p50_ms']:.1f}x |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
