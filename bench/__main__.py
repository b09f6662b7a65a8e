"""``python -m bench``: every benchmark in one run, written to docs/benchmarks.md.

    python -m bench                      # full run (~25 min on 2 cores), SciFact bundle
    python -m bench --quick --out /tmp/benchmarks.md   # CI smoke (< 2 min), sample corpus
    python -m bench --only query,embeddings           # some sections

Sections: ``encoders`` (student vs teacher per query), ``query`` (in-process
limit vs tandem over HTTP vs a naive server vs the teacher), ``embeddings``
(tandem vs infinity-emb), ``search`` (variants x corpus size), ``indexing``
(bundle build vs raw teacher). The ratios against the goals close the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tandem.models.encoder import Encoder

from bench import encoders, indexing, machine, peers, query_path, report, search_scaling
from bench.inputs import (
    REPO,
    SAMPLES,
    Workspace,
    read_queries,
    resolve_models,
    sample_bundle,
    scifact_dir,
)

SECTIONS = ("encoders", "query", "embeddings", "search", "indexing")
FULL_STUDENT = "scifact-adapter"
FULL_BUNDLE = REPO / "bundles" / "scifact"
QUICK_VARIANTS = ["f32-768", "bin-768"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 2 min (CI)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results")
    parser.add_argument("--bundle", type=Path, default=None, help="teacher-indexed bundle root")
    parser.add_argument("--student", default=None, help="aligned student (name or folder)")
    parser.add_argument("--queries", type=Path, default=None, help="JSONL or BEIR folder")
    parser.add_argument("--corpus", type=Path, default=None, help="indexing corpus")
    parser.add_argument("--index-docs", type=int, default=None, help="documents to index")
    parser.add_argument("--infinity-bin", type=Path, default=None, help="infinity_emb launcher")
    parser.add_argument(
        "--profile-seconds", type=float, default=None, help="py-spy the server (0: off)"
    )
    parser.add_argument(
        "--wait-load",
        type=float,
        default=0.0,
        help="first wait until the 1-min load average is below this (a quiet machine)",
    )
    parser.add_argument(
        "--wait-max-min", type=float, default=60.0, help="longest wait for --wait-load"
    )
    return parser.parse_args(argv)


def wait_for_quiet(threshold: float, max_minutes: float = 60.0) -> None:
    deadline = time.monotonic() + max_minutes * 60
    while machine.load_average()[0] >= threshold and time.monotonic() < deadline:
        print(f"bench: load average {machine.load_average()[0]:.2f} >= {threshold}; waiting")
        time.sleep(60)
    print(f"bench: starting at load average {machine.load_average()[0]:.2f}", flush=True)


def run_section(section: str, args: argparse.Namespace, ws: Workspace) -> dict[str, Any]:
    """One section's results; sizes depend on ``--quick``."""
    quick = ws.quick
    load = query_path.QUICK_LOAD if quick else query_path.FULL_LOAD
    profile_seconds = args.profile_seconds
    if profile_seconds is None:
        profile_seconds = 0.0 if quick else 20.0
    if section == "encoders":
        specs = [
            ("teacher", ws.models.teacher),
            ("student", ws.models.student),
            ("base student", ws.models.base_student),
        ]
        n = 30 if quick else 200
        return encoders.run(specs, (ws.queries * (n // len(ws.queries) + 1))[:n])
    if section == "query":
        rounds = query_path.QUICK_ROUNDS if quick else query_path.FULL_ROUNDS
        return query_path.run(ws, load, profile_seconds, rounds)
    if section == "embeddings":
        binary = args.infinity_bin or peers.default_infinity_bin()
        skip = None
        if quick and args.infinity_bin is None:
            skip = "skipped by --quick (its start alone takes ~25 s; pass --infinity-bin)"
        elif not binary.exists():
            skip = f"not installed at {binary} (bench/peers.py has the install line)"
        if skip:
            print(f"bench: infinity-emb {skip}; its rows are left out")
        return peers.run(ws, load, binary, skip, profile_seconds)
    if section == "search":
        cfg = search_scaling.QUICK_SCALING if quick else search_scaling.FULL_SCALING
        return search_scaling.run(cfg, ws.work)
    corpus = args.corpus or (SAMPLES / "corpus.jsonl" if quick else scifact_dir())
    docs = args.index_docs or (6 if quick else 96)
    return indexing.run(ws.models.teacher, corpus, docs, reps=1 if quick else 3)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        print(f"bench: unknown section(s) {', '.join(sorted(unknown))}; known: {SECTIONS}")
        return 2
    if args.wait_load > 0:
        wait_for_quiet(args.wait_load, args.wait_max_min)
    results: dict[str, Any] = {"machine": machine.describe(argv), "quick": args.quick}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp:
        work = Path(tmp)
        models = resolve_models(args.student or (None if args.quick else FULL_STUDENT), args.quick)
        bundle = args.bundle
        if bundle is None and args.quick:
            teacher = Encoder(models.teacher, device="cpu")
            bundle = sample_bundle(teacher, work / "sample-bundle", QUICK_VARIANTS)
            del teacher
        queries = args.queries or (SAMPLES / "queries.jsonl" if args.quick else scifact_dir())
        ws = Workspace(args.quick, models, bundle or FULL_BUNDLE, read_queries(queries), work)
        for section in (s for s in SECTIONS if s in only):
            t0 = time.perf_counter()
            print(f"bench: {section} ...", flush=True)
            results[section] = run_section(section, args, ws)
            print(f"bench: {section} done in {time.perf_counter() - t0:.0f} s", flush=True)
    results["duration_s"] = time.perf_counter() - started
    results["load_after"] = machine.load_average()
    report.write(results, args.out)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"bench: wrote {args.out} in {results['duration_s']:.0f} s\n")
    for r in report.ratios(results):
        met = {True: "met", False: "MISSED", None: "not measured"}[r.met]
        print(f"  {r.goal}: {r.measured:.2f} (goal {r.target:g}) -> {r.of_goal:.2f} of goal, {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
