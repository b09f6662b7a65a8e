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


def indexing(n_docs: int, out: Path | None, dataset: Path = SCIFACT) -> dict[str, Any]:
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
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        started = time.perf_counter()
        teacher.encode([d.text for d in docs], "document")
        raw = time.perf_counter() - started
        results["rows"].append({"how": "raw teacher loop (encode, no bundle)", "seconds": raw})
        started = time.perf_counter()
        build_bundle(docs, Path(tmp) / "single", teacher, ["f32-768"], use_cache=False)
        single = time.perf_counter() - started
        results["rows"].append({"how": "index build, one process (2 threads)", "seconds": single})
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        results["ray_init_s"] = time.perf_counter() - started
        try:
            for actors, cpus in ((1, 2.0), (2, 1.0)):
                engine = RayEngine(
                    teacher_dir=teacher.folder,
                    actors=actors,
                    cpus_per_actor=cpus,
                    shard_size=max(8, n_docs // (4 * actors)),
                )
                root = Path(tmp) / f"ray{actors}"
                started = time.perf_counter()
                build_bundle(docs, root, teacher, ["f32-768"], engine=engine)
                seconds = time.perf_counter() - started
                with open_bundle(root) as got, open_bundle(Path(tmp) / "single") as want:
                    a = np.asarray(got.vectors, np.float32)
                    b = np.asarray(want.vectors, np.float32)
                    cosine = float(np.einsum("ij,ij->i", a, b).min())
                    same_ids = got.external_ids() == want.external_ids()
                results["rows"].append(
                    {
                        "how": f"index build --engine ray, {actors} actor(s) x {cpus:g} CPU",
                        "seconds": seconds,
                        "min_cosine_vs_single": cosine,
                        "same_ids": same_ids,
                    }
                )
        finally:
            ray.shutdown()
    for row in results["rows"]:
        row["docs_per_s"] = n_docs / row["seconds"]
    _print_indexing(results)
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _print_indexing(results: dict[str, Any]) -> None:
    n = results["docs"]
    print(f"\n### Teacher indexing, {n} SciFact documents, 2 shared CPU cores\n")
    print("| how | seconds | docs/s | vs one process | ids equal | min cosine |")
    print("|---|---:|---:|---:|---|---:|")
    single = next(r for r in results["rows"] if "one process" in r["how"])["seconds"]
    for r in results["rows"]:
        cosine = f"{r['min_cosine_vs_single']:.6f}" if "min_cosine_vs_single" in r else ""
        same = {True: "yes", False: "NO"}.get(r.get("same_ids"), "")  # type: ignore[call-overload]
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
    srch = sub.add_parser("search")
    srch.add_argument("bundle", type=Path)
    srch.add_argument("--milvus", required=True, help="milvus-lite .db path or Milvus URI")
    srch.add_argument("--queries", type=int, default=200)
    srch.add_argument("--json", type=Path)
    for command in (idx, srch):
        command.add_argument("--dataset", type=Path, default=SCIFACT, help="BEIR SciFact folder")
    args = parser.parse_args()
    if args.what == "indexing":
        indexing(args.docs, args.json, args.dataset)
    else:
        search(args.bundle, args.milvus, args.queries, args.json, args.dataset)


if __name__ == "__main__":
    main()
