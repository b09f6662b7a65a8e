"""Search cost against corpus size: every variant kind at 10k, 100k and 1M documents.

Synthetic unit vectors (seeded) stand in for teacher embeddings: speed and
memory depend on the count and the dimension, not on what the vectors mean;
quality is measured by ``tandem eval`` on real data. Queries are noisy
copies of documents (cosine about 0.7 to their source), so graph searches
walk towards a real neighbourhood as they do on real queries.

Indexes are built by the indexer's own code (``tandem.bundle.variants``) and
searched by the server's (``search_variant``; rescoring by
``tandem.bundle.search.rescore`` over float16 stored vectors memory-mapped from
disk, as in a bundle). Single-query time uses one FAISS thread, as the
server does per request; batched time uses every core.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
from tandem.bundle.search import SearchTarget, rescore
from tandem.bundle.variants import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    VariantSpec,
    build_index_with_params,
    search_variant,
    write_index,
)

DIM = 768
K = 10
OVERSAMPLE = 10  # binary + rescore: k x 10 candidates, rescored with float vectors
EF_SEARCH = 64  # the server's default (raised to the candidate count)
SEED = 1234


@dataclass(frozen=True)
class Scaling:
    """Sizes to measure, queries per measurement, and the HNSW build budget."""

    sizes: tuple[int, ...]
    n_queries: int
    single_budget_s: float  # time cap for the one-query-at-a-time loop of one variant
    hnsw_budget_s: float  # build HNSW only where the estimated build time fits


FULL_SCALING = Scaling((10_000, 100_000, 1_000_000), 100, 20.0, 420.0)
QUICK_SCALING = Scaling((1_000, 5_000), 20, 1.0, 10.0)

# (row label, variant name, rescore?)
ROWS: tuple[tuple[str, str, bool], ...] = (
    ("f32 flat", "f32-768", False),
    ("int8 flat", "int8-768", False),
    ("binary flat", "bin-768", False),
    ("binary flat + rescore", "bin-768", True),
    ("f32 HNSW", "f32-768-hnsw", False),
    ("binary HNSW", "bin-768-hnsw", False),
    ("binary HNSW + rescore", "bin-768-hnsw", True),
    ("f32 truncated 256", "f32-256", False),
    ("f32 truncated 64", "f32-64", False),
)


def unit_vectors(n: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    """Seeded Gaussian rows scaled to unit length (uniform on the sphere), built in place."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        part = rng.standard_normal((min(65536, n - start), dim), dtype=np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        out[start : start + part.shape[0]] = part
    return out


def noisy_queries(docs: npt.NDArray[np.float32], n: int, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(docs.shape[0], size=n, replace=False)
    noise = rng.standard_normal((n, docs.shape[1]), dtype=np.float32) / math.sqrt(docs.shape[1])
    queries = docs[rows] + noise  # cosine ~ 1/sqrt(2) to the source document
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def _search(
    spec: VariantSpec,
    index: Any,
    stored: npt.NDArray[Any],
    queries: npt.NDArray[np.float32],
    with_rescore: bool,
) -> None:
    k_first = K * OVERSAMPLE if with_rescore else K
    ef = max(EF_SEARCH, k_first) if spec.hnsw else None
    _scores, ids = search_variant(spec, index, queries, k_first, ef)
    if with_rescore:
        rescore(SearchTarget(stored, {}, {}), queries, ids, K)


def time_search(
    spec: VariantSpec,
    index: Any,
    stored: npt.NDArray[Any],
    queries: npt.NDArray[np.float32],
    with_rescore: bool,
    budget_s: float,
) -> dict[str, float]:
    """ms per query: one at a time on one thread (p50), and all at once on every core."""
    _search(spec, index, stored, queries[:2], with_rescore)  # warm up
    faiss.omp_set_num_threads(1)
    singles: list[float] = []
    deadline = time.perf_counter() + budget_s
    for i in range(queries.shape[0]):
        started = time.perf_counter()
        _search(spec, index, stored, queries[i : i + 1], with_rescore)
        singles.append((time.perf_counter() - started) * 1e3)
        if time.perf_counter() > deadline and len(singles) >= 5:
            break
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    _search(spec, index, stored, queries, with_rescore)
    batched = (time.perf_counter() - started) * 1e3 / queries.shape[0]
    return {
        "single_p50_ms": float(np.percentile(singles, 50)),
        "single_mean_ms": float(np.mean(singles)),
        "single_n": len(singles),
        "batched_ms": batched,
    }


def index_bytes(spec: VariantSpec, index: Any, folder: Path) -> int:
    """Size of the index as a bundle stores (and a server maps) it."""
    path = folder / f"{spec.name}.faiss"
    write_index(spec, index, path)
    size = path.stat().st_size
    path.unlink()
    return size


def _hnsw_estimate(rates: dict[str, tuple[int, float]], name: str, n: int) -> float | None:
    """Build seconds at n from the largest measured size, scaled by n log n (HNSW inserts
    cost about log n each); None when no size was measured yet."""
    if name not in rates:
        return None
    n0, s0 = rates[name]
    return s0 * (n * math.log(n)) / (n0 * math.log(n0))


def run(cfg: Scaling, work: Path) -> dict[str, Any]:
    """Section 2: build, size and time every row at every size."""
    results: list[dict[str, Any]] = []
    built_rates: dict[str, tuple[int, float]] = {}  # hnsw variant -> (n, build seconds)
    threads = os.cpu_count() or 1
    last_use = {name: i for i, (_label, name, _rescore) in enumerate(ROWS)}
    for n in cfg.sizes:
        docs = unit_vectors(n, DIM, SEED)
        queries = noisy_queries(docs, cfg.n_queries, SEED)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            folder = Path(tmp)
            np.save(folder / "vectors.f16.npy", docs.astype(np.float16))
            stored = np.load(folder / "vectors.f16.npy", mmap_mode="r")
            _ = np.asarray(stored[::1024], dtype=np.float32)  # touch: warm page cache mapping
            indexes: dict[str, tuple[Any, float, int]] = {}
            for position, (label, name, with_rescore) in enumerate(ROWS):
                spec = VariantSpec.parse(name, DIM)
                row: dict[str, Any] = {"label": label, "variant": name, "n": n}
                row["rescore"] = with_rescore
                if name not in indexes:
                    estimate = _hnsw_estimate(built_rates, name, n) if spec.hnsw else None
                    if estimate is not None and estimate > cfg.hnsw_budget_s:
                        n0, s0 = built_rates[name]
                        row |= {
                            "skipped": True,
                            "build_s": estimate,
                            "note": f"build not run: extrapolated from {s0:.0f} s at {n0:,} "
                            "docs by n log n",
                        }
                        results.append(row)
                        continue
                    faiss.omp_set_num_threads(threads)
                    started = time.perf_counter()
                    index, _params = build_index_with_params(spec, docs)
                    build_s = time.perf_counter() - started
                    indexes[name] = (index, build_s, index_bytes(spec, index, folder))
                    if spec.hnsw:
                        built_rates[name] = (n, build_s)
                index, build_s, size = indexes[name]
                row |= {"build_s": build_s, "bytes_per_doc": size / n}
                if with_rescore:
                    row["stored_bytes_per_doc"] = stored.dtype.itemsize * DIM
                row |= time_search(spec, index, stored, queries, with_rescore, cfg.single_budget_s)
                results.append(row)
                if last_use[name] == position:
                    del indexes[name]  # no later row needs it: free the memory now
            del stored
        del docs
    return {
        "dim": DIM,
        "k": K,
        "oversample": OVERSAMPLE,
        "ef_search": EF_SEARCH,
        "hnsw": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
        "threads_batched": threads,
        "threads_single": 1,
        "n_queries": cfg.n_queries,
        "rows": results,
    }
