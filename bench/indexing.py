"""Indexing throughput against the teacher's raw ONNX throughput, same texts, same run.

Each measurement runs in a fresh child process so its peak RSS is its own:
``raw`` is a bare ``Encoder.encode`` over the texts, ``build`` is
``build_bundle`` (no embedding cache, so every document is embedded; then
vectors, variants, checksums, publish). The two alternate, twice, and the
best time of each is kept, so a slow moment of the machine hits both. The
int8 teacher is measured too when its quantization guard accepted one.

    python -m bench.indexing --child build --precision fp32 --docs 64 --corpus DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

from tandem.models.card import ModelCard

VARIANTS = "f32-768,int8-768,bin-768"


def child(mode: str, precision: str, docs: int, corpus: Path, variants: str) -> dict[str, Any]:
    """One timed pass in this process; the model load is outside the timed region."""
    from tandem.indexer.build import build_bundle
    from tandem.models.encoder import Encoder
    from tandem.toolchain.export import export_artifact

    from tandem.data.corpus import read_corpus

    items = list(islice(read_corpus(corpus), docs))
    texts = [d.text for d in items]
    teacher = Encoder(export_artifact("all-mpnet-base-v2"), precision, "cpu")  # type: ignore[arg-type]
    teacher.encode(texts[:2], "document")  # warm up
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if mode == "raw":
            teacher.encode(texts, "document")
        else:
            build_bundle(items, Path(tmp) / "b", teacher, variants.split(","), use_cache=False)
        seconds = time.perf_counter() - started
    peak_mib = peak_rss_mib()
    return {
        "mode": mode,
        "precision": precision,
        "docs": len(items),
        "seconds": seconds,
        "peak_rss_mib": peak_mib,
    }


def peak_rss_mib() -> float:
    """This process's peak RSS. ``VmHWM`` belongs to the process image, so unlike
    ``ru_maxrss`` (kept across fork and exec on Linux) it never reports the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spawn(mode: str, precision: str, docs: int, corpus: Path, variants: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.indexing", "--child", mode, "--precision", precision]
    command += ["--docs", str(docs), "--corpus", str(corpus), "--variants", variants]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"indexing child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run(
    teacher: Path, corpus: Path, docs: int, reps: int, variants: str = VARIANTS
) -> dict[str, Any]:
    """Section 3: docs/s of raw encode and of the bundle build, per teacher precision."""
    precisions = ["fp32"]
    if ModelCard.load(teacher).int8 is not None:
        precisions.append("int8")
    rows = []
    for precision in precisions:
        passes: dict[str, list[dict[str, Any]]] = {"raw": [], "build": []}
        for _ in range(reps):
            for mode in ("raw", "build"):
                passes[mode].append(_spawn(mode, precision, docs, corpus, variants))
        best = {mode: min(p["seconds"] for p in runs) for mode, runs in passes.items()}
        n = passes["raw"][0]["docs"]
        for mode in ("raw", "build"):
            rows.append(
                {
                    "precision": precision,
                    "mode": mode,
                    "docs": n,
                    "docs_per_s": n / best[mode],
                    "ratio_to_raw": best["raw"] / best[mode],
                    "peak_rss_mib": max(p["peak_rss_mib"] for p in passes[mode]),
                    "seconds": [p["seconds"] for p in passes[mode]],
                }
            )
    return {"corpus": str(corpus), "docs": docs, "reps": reps, "variants": variants, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description="one indexing measurement (a child process)")
    parser.add_argument("--child", choices=["raw", "build"], required=True)
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--variants", default=VARIANTS)
    args = parser.parse_args()
    result = child(args.child, args.precision, args.docs, args.corpus, args.variants)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
