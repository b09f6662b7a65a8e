"""The embedding part alone: tandem's /v1/embeddings against infinity-emb's /embeddings.

Both serve the same model folder (the unaligned all-MiniLM-L6-v2 student,
384-d) on the same machine, one after the other, and get the same requests
from the same client: one query text per request, closed loop. tandem runs
its ONNX export (micro-batched); infinity runs its default torch engine
with its own dynamic batching.

infinity-emb pins dependencies that clash with tandem's, so it lives in its
own virtual environment; ``--infinity-bin`` points at its ``infinity_emb``
launcher. It is never installed by the benchmark:

    python3 -m venv ~/.cache/tandem/bench/infinity-venv
    ~/.cache/tandem/bench/infinity-venv/bin/pip install 'infinity-emb[server,torch]'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tandem.models.card import ModelCard

from bench.inputs import Workspace
from bench.machine import command_output
from bench.profile import profile_server
from bench.query_path import Load, measure_server
from bench.servers import listen_args, tandem_server
from tandem.home import tandem_home
from tests.support.server import ServerProcess, ServerStartError, free_port, running

SERVED_NAME = "all-MiniLM-L6-v2"


def default_infinity_bin() -> Path:
    return tandem_home() / "bench" / "infinity-venv" / "bin" / "infinity_emb"


def infinity_version(binary: Path) -> str:
    script = "import importlib.metadata as m; print(m.version('infinity_emb'))"
    found = command_output([str(binary.parent / "python"), "-c", script], timeout_s=60)
    return found or "unknown"


def infinity_server(binary: Path, model_folder: Path, log_dir: Path) -> ServerProcess:
    """``infinity_emb v2`` on the sentence-transformers folder, torch engine, CPU."""
    port = free_port()
    command = [
        str(binary),
        "v2",
        "--model-id",
        str(model_folder),
        "--served-model-name",
        SERVED_NAME,
        "--engine",
        "torch",
        "--device",
        "cpu",
        *listen_args(port),
    ]
    # No telemetry and no hub: this machine reaches no outside address.
    env = {"DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1"}
    return ServerProcess("infinity", command, port, log_dir / "infinity.log", "/health", env)


def run(
    ws: Workspace,
    load: Load,
    infinity_bin: Path,
    skip_infinity: str | None = None,
    profile_seconds: float = 0.0,
) -> dict[str, Any]:
    """Section 1b: embeddings/s of both servers at each concurrency level.

    ``skip_infinity`` is the reason infinity-emb is left out (it is reported);
    ``profile_seconds`` > 0 also samples tandem under /v1/embeddings at concurrency 32.
    """
    texts = ws.queries
    base = ModelCard.load(ws.models.base_student)
    out: dict[str, Any] = {
        "model": base.name,
        "model_folder": str(ws.models.base_student_st),
        "load": {"levels": load.levels, "requests": load.requests, "max_s": load.max_seconds},
        "servers": [],
    }
    server = tandem_server(ws.symmetric(), ws.models.base_student, ws.work, "tandem-embeddings")
    with running(server):
        bodies: list[dict[str, Any]] = [{"input": t} for t in texts]
        out["servers"].append(
            measure_server(
                server,
                f"tandem /v1/embeddings ({base.name}, ONNX fp32)",
                "tandem",
                "/v1/embeddings",
                bodies,
                load,
            )
        )
        if profile_seconds > 0:
            out["profiles"] = {
                32: profile_server(
                    server, "/v1/embeddings", bodies, 32, profile_seconds, ws.work / "profile-emb"
                )
            }
    if skip_infinity is None and not infinity_bin.exists():
        skip_infinity = (
            f"infinity-emb is not installed at {infinity_bin}; bench/peers.py has the install line"
        )
    if skip_infinity is not None:
        out["infinity_error"] = skip_infinity
        return out
    out["infinity_version"] = infinity_version(infinity_bin)
    server = infinity_server(infinity_bin, ws.models.base_student_st, ws.work)
    try:
        with running(server, timeout=600):
            bodies = [{"model": SERVED_NAME, "input": [t]} for t in texts]
            out["servers"].append(
                measure_server(
                    server,
                    f"infinity-emb {out['infinity_version']} /embeddings "
                    f"({base.name}, torch engine)",
                    "infinity",
                    "/embeddings",
                    bodies,
                    load,
                )
            )
    except ServerStartError as exc:
        out["infinity_error"] = str(exc)
    return out
