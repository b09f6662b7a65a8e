"""Indexing throughput against the teacher's raw ONNX throughput, same texts, same run.

Usage: python -m bench.indexing [--docs 256]
The bundle build (no embedding cache, so every document is embedded) and a bare
``Encoder.encode`` over the same texts alternate twice; the ratio of their best
times is what we track (goal: indexing >= 0.9 x raw teacher).
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from indexer.build import build_bundle
from indexer.corpus import read_corpus
from models.artifacts import resolve_artifact
from models.encoder import Encoder

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


def main(
    docs: Annotated[int, typer.Option(help="SciFact documents to embed.")] = 256,
    variants: Annotated[str, typer.Option(help="Variants to build.")] = "f32-768,int8-768,bin-768",
    out: Annotated[Path, typer.Option(help="Markdown table to write.")] = Path(
        "bench/results/indexing.md"
    ),
) -> None:
    corpus = [d for _, d in zip(range(docs), read_corpus(SCIFACT), strict=False)]
    texts = [d.text for d in corpus]
    teacher = Encoder(resolve_artifact("all-mpnet-base-v2"))
    teacher.encode(texts[:4])  # warm up
    raw_s, build_s = [], []
    for _ in range(2):
        start = time.perf_counter()
        teacher.encode(texts, "document")
        raw_s.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            build_bundle(corpus, Path(tmp) / "b", teacher, variants.split(","), use_cache=False)
            build_s.append(time.perf_counter() - start)
    raw, build = docs / min(raw_s), docs / min(build_s)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"{docs} SciFact documents, variants {variants}, teacher all-mpnet-base-v2 fp32 ONNX. "
        "Command: `python -m bench.indexing`.",
        "",
        "| path | docs/s | ratio to raw teacher |",
        "|---|---|---|",
        f"| raw `Encoder.encode` | {raw:.2f} | 1.00 |",
        f"| `build_bundle` (embed, write, variants, verify) | {build:.2f} | {build / raw:.2f} |",
        "",
        f"Peak RSS of the process: {peak_mib:.0f} MiB.",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
