"""Scaling out, measured on this machine: Ray indexing vs one process, Milvus vs FAISS search.

    python -m bench.scale_out indexing --docs 160          # SciFact's first N documents
    python -m bench.scale_out search BUNDLE --milvus DB    # push, then latency + overlap

``indexing`` builds the same bundle three ways (one process; Ray with one
actor of 2 threads; Ray with two actors of 1 thread), without the embedding
cache, and prints docs/s, Ray's start-up cost and the vectors' agreement; the
GPU line is a projection of the throughput an actor would need, not a
measurement. ``search`` pushes the bundle to Milvus (milvus-lite here) and
times the same single queries through FaissBackend and MilvusBackend, with
the top-10 overlap per variant and rescoring setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "data" / "scifact"  # --dataset overrides (a worktree)


def _teacher() -> Any:
    from tandem.models.artifacts import resolve_artifact
    from tandem.models.encoder import Encoder

    return Encoder(resolve_artifact("all-mpnet-base-v2"), device="cpu")


def indexing(
    n_docs: int, out: Path | None, dataset: Path = SCIFACT, reverse: bool = False
) -> dict[str, Any]:
    import ray
    from tandem.bundle.format import open_bundle
    from tandem.indexer.build import build_bundle
    from tandem.indexer.ray_engine import RayEngine

    from tandem.data.corpus import read_corpus

    if not (dataset / "corpus.jsonl").exists():
        sys.exit(f"needs the SciFact corpus at {dataset} (BEIR scifact; pass --dataset)")
    docs = list(islice(read_corpus(dataset), n_docs))
    teacher = _teacher()
    results: dict[str, Any] = {"docs": n_docs, "rows": []}
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results["ray_init_s"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        roots: dict[str, Path] = {}

        def raw() -> None:
            teacher.encode([d.text for d in docs], "document")

        def single() -> None:
            roots["single"] = Path(tmp) / "single"
            build_bundle(docs, roots["single"], teacher, ["f32-768"], use_cache=False)

        def on_ray(actors: int, cpus: float) -> Any:
            def run() -> None:
                engine = RayEngine(
                    teacher_dir=teacher.folder,
                    actors=actors,
                    cpus_per_actor=cpus,
                    shard_size=max(8, n_docs // (4 * actors)),
                )
                roots[f"ray{actors}"] = Path(tmp) / f"ray{actors}"
                build_bundle(docs, roots[f"ray{actors}"], teacher, ["f32-768"], engine=engine)

            return run

        steps = [
            ("raw teacher loop (encode, no bundle)", "raw", raw),
            ("index build, one process (2 threads)", "single", single),
            ("index build --engine ray, 1 actor(s) x 2 CPU", "ray1", on_ray(1, 2.0)),
            ("index build --engine ray, 2 actor(s) x 1 CPU", "ray2", on_ray(2, 1.0)),
        ]
        if reverse:
            steps.reverse()
        try:
            for how, key, step in steps:
                started = time.perf_counter()
                step()
                results["rows"].append(
                    {"how": how, "key": key, "seconds": time.perf_counter() - started}
                )
        finally:
            ray.shutdown()
        for row in results["rows"]:
            if row["key"].startswith("ray"):
                with open_bundle(roots[row["key"]]) as got, open_bundle(roots["single"]) as want:
                    a = np.asarray(got.vectors, np.float32)
                    b = np.asarray(want.vectors, np.float32)
                    row["min_cosine_vs_single"] = float(np.einsum("ij,ij->i", a, b).min())
                    row["same_ids"] = got.external_ids() == want.external_ids()
    results["order"] = [row["key"] for row in results["rows"]]
    for row in results["rows"]:
        row["docs_per_s"] = n_docs / row["seconds"]
    _print_indexing(results)
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _print_indexing(results: dict[str, Any]) -> None:
    n = results["docs"]
    print(f"\n### Teacher indexing, {n} SciFact documents, 2 shared CPU cores")
    print(f"(run order: {', '.join(results['order'])})\n")
    print("| how | seconds | docs/s | vs one process | ids equal | min cosine |")
    print("|---|---:|---:|---:|---|---:|")
    single = next(r for r in results["rows"] if "one process" in r["how"])["seconds"]
    for r in results["rows"]:
        cosine = f"{r['min_cosine_vs_single']:.6f}" if "min_cosine_vs_single" in r else ""
        same = {True: "yes", False: "NO"}.get(r.get("same_ids"), "")
        print(
            f"| {r['how']} | {r['seconds']:.1f} | {r['docs_per_s']:.2f} | "
            f"{single / r['seconds']:.2f}x | {same} | {cosine} |"
        )
    print(f"\nRay start-up (ray.init, local): {results['ray_init_s']:.1f} s, not in the rows.")
    print("\nProjection (not measured): docs/s each GPU actor must sustain to embed")
    print("100M documents in 24 h:")
    for actors in (8, 32, 128):
        print(f"- {actors} actors: {100e6 / (86400 * actors):,.0f} docs/s per actor")


def search(
    bundle: Path, db: str, n_queries: int, out: Path | None, dataset: Path = SCIFACT
) -> dict[str, Any]:
    import faiss
    from tandem.bundle.backend import FaissBackend
    from tandem.bundle.format import open_bundle
    from tandem.bundle.milvus import MilvusBackend, field_for
    from tandem.bundle.search import SearchPlan
    from tandem.indexer.push import push_bundle

    faiss.omp_set_num_threads(1)  # as the server runs searches (TANDEM_FAISS_THREADS=1)
    queries_file = dataset / "queries.jsonl"
    texts = [json.loads(line)["text"] for line in islice(open(queries_file), n_queries)]
    teacher = _teacher()
    vectors = teacher.encode(texts, "query")
    pushed = push_bundle(bundle, db, "scifact", keep=1)
    milvus = MilvusBackend(db, "scifact")
    opened = open_bundle(bundle)
    names = [v for v in opened.variant_names() if field_for(opened.spec(v), opened.dim)]
    local = FaissBackend(
        opened, {n: opened.spec(n) for n in names}, {n: opened.index(n) for n in names}
    )
    rows = []
    for name in names:
        for rescore in (False, True):
            plan = SearchPlan(variant=name, k=10, rescore=rescore)
            timings: dict[str, list[float]] = {"faiss": [], "milvus": []}
            overlap, identical = [], 0
            for i in range(len(texts)):
                q = vectors[i : i + 1]
                started = time.perf_counter()
                want = local.search(q, plan)
                timings["faiss"].append(time.perf_counter() - started)
                started = time.perf_counter()
                got = milvus.search(q, plan)
                timings["milvus"].append(time.perf_counter() - started)
                a, b = set(got.ids[0].tolist()), set(want.ids[0].tolist())
                overlap.append(len(a & b) / max(1, len(b)))
                identical += got.ids[0].tolist() == want.ids[0].tolist()
            rows.append(
                {
                    "variant": name,
                    "rescore": rescore,
                    "faiss_ms_p50": 1e3 * statistics.median(timings["faiss"]),
                    "milvus_ms_p50": 1e3 * statistics.median(timings["milvus"]),
                    "faiss_ms_p95": 1e3 * float(np.percentile(timings["faiss"], 95)),
                    "milvus_ms_p95": 1e3 * float(np.percentile(timings["milvus"], 95)),
                    "overlap_at_10": float(np.mean(overlap)),
                    "identical_lists": identical / len(texts),
                }
            )
    milvus.close()
    opened.close()
    results = {"bundle": str(bundle), "docs": opened.n_docs, "queries": len(texts), "rows": rows}
    results["collection"] = pushed.collection
    print(f"\n### Search, {opened.n_docs} docs, {len(texts)} single queries, k=10\n")
    print("| variant | rescore | FAISS p50 ms | Milvus-lite p50 ms | FAISS p95 | Milvus p95 |"
          " top-10 overlap | identical lists |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {'x4' if r['rescore'] else 'no'} | {r['faiss_ms_p50']:.2f} | "
            f"{r['milvus_ms_p50']:.2f} | {r['faiss_ms_p95']:.2f} | {r['milvus_ms_p95']:.2f} | "
            f"{r['overlap_at_10']:.4f} | {r['identical_lists']:.3f} |"
        )
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    idx = sub.add_parser("indexing")
    idx.add_argument("--docs", type=int, default=160)
    idx.add_argument("--json", type=Path)
    idx.add_argument("--reverse", action="store_true", help="run Ray first (load drifts)")
    srch = sub.add_parser("search")
    srch.add_argument("bundle", type=Path)
    srch.add_argument("--milvus", required=True, help="milvus-lite .db path or Milvus URI")
    srch.add_argument("--queries", type=int, default=200)
    srch.add_argument("--json", type=Path)
    for command in (idx, srch):
        command.add_argument("--dataset", type=Path, default=SCIFACT, help="BEIR SciFact folder")
    args = parser.parse_args()
    if args.what == "indexing":
        indexing(args.docs, args.json, args.dataset, args.reverse)
    else:
        search(args.bundle, args.milvus, args.queries, args.json, args.dataset)


if __name__ == "__main__":
    main()
