"""Where a server's time goes under load: py-spy samples grouped by stage.

py-spy samples the server process from outside (no code change, no
restart) while the load generator keeps it busy at a fixed concurrency.
Each sample is attributed to the deepest frame that names a stage
(student forward, tokenization, FAISS, response serialization, HTTP
protocol, ...), so the shares say which stage a CPU-second went to. The
run is separate from the measured ones: sampling costs CPU on a small box.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import loadgen
from tests.support.server import HOST, ServerProcess

# (stage, substrings of a frame that belong to it); deepest matching frame wins.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("student ONNX forward", ("forward (models/encoder.py", "run (onnxruntime")),
    ("tokenization", ("tokenize", "encode_batch", "merge_token_batches")),
    ("FAISS first pass", ("search_variant", "index.search", "faiss")),
    ("rescoring", ("rescore (bundle/search.py", "score_rows")),
    ("document fetch (sqlite)", ("documents (indexer/bundle.py", "docstore.py", "_with_docs")),
    ("sentence-transformers / torch", ("sentence_transformers", "torch")),
    (
        "response building + JSON",
        (
            "serialize_response",
            "jsonable_encoder",
            "_responses (server/search.py",
            "render (starlette",
            "dump_json",
            "_encode (server/app.py",
            "model_dump",
            "json/encoder.py",
        ),
    ),
    (
        "request parsing + validation",
        ("request_body_to_args", "solve_dependencies", "get_request_handler", "json/decoder.py"),
    ),
    ("micro-batcher", ("server/batching.py",)),
    ("metrics + middleware", ("prometheus_client", "server/middleware.py", "server/metrics.py")),
    ("HTTP protocol (uvicorn)", ("h11", "httptools", "uvicorn/protocols")),
    ("routing (starlette/fastapi)", ("starlette", "fastapi")),
    ("asyncio event loop", ("asyncio",)),
)


def stage_of(frames: list[str]) -> str:
    """The stage of one stack (root first): the deepest frame that names one."""
    for frame in reversed(frames):
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return stage
    return "other"


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Shares by stage and the hottest leaf frames of a py-spy ``--format raw`` file."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        stages[stage_of(frames)] += n
        leaves[frames[-1]] += n
        total += n
    return {
        "samples": total,
        "stages": {k: v / total for k, v in stages.most_common()} if total else {},
        "top_leaves": [(f, n / total) for f, n in leaves.most_common(top)] if total else [],
    }


def profile_server(
    server: ServerProcess,
    path: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    seconds: float,
    out: Path,
) -> dict[str, Any]:
    """Sample ``server`` with py-spy for ``seconds`` under a closed loop at ``concurrency``."""
    spy = shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".txt")
    command = [spy, "record", "-p", str(server.pid), "-d", str(int(seconds)), "-r", "100"]
    command += ["-f", "raw", "-o", str(raw), "--nonblocking"]
    spy_proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.5)  # py-spy attaches
    requests = [
        loadgen.encode_post(HOST, server.port, path, json.dumps(b).encode()) for b in bodies
    ]
    loadgen.closed_loop(HOST, server.port, requests, concurrency, 10**7, seconds)
    try:
        log, _ = spy_proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        spy_proc.kill()
        log, _ = spy_proc.communicate()
    if spy_proc.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed ({spy_proc.returncode}): {log.decode(errors='replace')}"}
    return summarize(raw) | {"concurrency": concurrency, "seconds": seconds, "raw": str(raw)}
