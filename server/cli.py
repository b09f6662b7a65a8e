"""``tandem serve``: check everything that can be checked, then run uvicorn.

Each flag maps one-to-one onto a ``ServerSettings`` field and can equally be
given as ``TANDEM_<FIELD>`` (flags win). Before the port is bound the CLI
verifies the bundle, the student's pairing with the bundle's teacher and the
served variants, and exits non-zero with the reason when one fails. Workers
are uvicorn processes started by the app factory; they read the same
settings from the environment, map the same index files (the page cache is
shared), and share Prometheus state through ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import uvicorn
from pydantic import ValidationError
from tandem.server.metrics import MULTIPROC_ENV
from tandem.server.settings import ServerSettings
from tandem.server.state import StartupCheckError, preflight
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

logger = logging.getLogger(__name__)

APP_FACTORY = "tandem.server.app:create_app_from_env"
EXIT_CONFIG = 2


HELP = {
    "bundle": "Bundle root (with `current`) or a version folder. Every flag is also an env "
    "variable: TANDEM_<FLAG>, e.g. TANDEM_BUNDLE, TANDEM_API_KEY.",
    "student": "Query encoder: artifact folder, aligned name or model spec.",
    "host": "Interface to bind (default 0.0.0.0).",
    "port": "Port to bind (default 8080).",
    "workers": "uvicorn worker processes; each loads the student, indexes are shared via mmap.",
    "variant": "Variant to serve (repeatable); the first is the default. Default: all.",
    "allow_unaligned": "Serve a student not aligned to the bundle's teacher (poor results).",
    "api_key": "Bearer key for the API and /admin; prefer TANDEM_API_KEY (flags show up in ps).",
    "precision": "Student precision: fp32 or int8.",
    "device": "Student device: auto, cpu or cuda.",
    "faiss_device": "FAISS indexes on auto, cpu or cuda.",
    "faiss_threads": "OpenMP threads per FAISS search (default 1: requests run in parallel).",
    "threads": "onnxruntime intra-op threads per worker.",
    "search_threads": "Threads running searches per worker.",
    "max_batch_size": "Most queries per ONNX run (larger: more throughput, more latency).",
    "max_batch_tokens": "Padded-token budget per ONNX run.",
    "max_wait_ms": "Longest a query waits for batch company (only under concurrent load).",
    "max_queue": "Queries admitted at once per worker; beyond it: 429.",
    "request_timeout_s": "Per-request deadline; past it: 503.",
    "max_k": "Largest k accepted.",
    "max_batch_queries": "Most inputs in one batch request.",
    "max_input_chars": "Characters kept per query before tokenization.",
    "truncate": "Truncate over-long queries (and say so) or answer 422.",
    "oversample": "Default candidates per result when rescoring.",
    "rescore": "Default rescoring: auto, always or never.",
    "ef_search": "HNSW efSearch.",
    "mode": "Default search mode: asymmetric, or fused (needs a bundle with a student view).",
    "fused_weight": "Fused weight of the asymmetric cosine (default: the bundle's student view's).",
    "watch_current": "Reload by itself when `current` moves.",
    "served_model_name": "Model id in the OpenAI-compatible routes.",
    "log_level": "critical, error, warning, info or debug.",
    "log_queries": "Log every query text (off by default: queries may hold personal data).",
    "retry_after_s": "Retry-After seconds on 429 and 503.",
    "max_body_bytes": "Largest request body accepted (413 beyond).",
    "filter_exact_max": "Filters matching at most this many docs are scored exactly.",
    "max_candidates": "Most first-pass candidates rescored per query.",
    "control_dir": "Folder through which workers share reload requests (default: a temp dir).",
    "reload_poll_s": "How often workers look at the control folder (and `current`).",
}


def serve(
    bundle: Annotated[Path | None, typer.Option("--bundle", help=HELP["bundle"])] = None,
    student: Annotated[str | None, typer.Option("--student", help=HELP["student"])] = None,
    host: Annotated[str | None, typer.Option("--host", help=HELP["host"])] = None,
    port: Annotated[int | None, typer.Option("--port", help=HELP["port"])] = None,
    workers: Annotated[int | None, typer.Option("--workers", help=HELP["workers"])] = None,
    variant: Annotated[list[str] | None, typer.Option("--variant", help=HELP["variant"])] = None,
    allow_unaligned: Annotated[
        bool | None,
        typer.Option("--allow-unaligned/--require-aligned", help=HELP["allow_unaligned"]),
    ] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help=HELP["api_key"])] = None,
    precision: Annotated[str | None, typer.Option("--precision", help=HELP["precision"])] = None,
    device: Annotated[str | None, typer.Option("--device", help=HELP["device"])] = None,
    faiss_device: Annotated[
        str | None, typer.Option("--faiss-device", help=HELP["faiss_device"])
    ] = None,
    faiss_threads: Annotated[
        int | None, typer.Option("--faiss-threads", help=HELP["faiss_threads"])
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", help=HELP["threads"])] = None,
    search_threads: Annotated[
        int | None, typer.Option("--search-threads", help=HELP["search_threads"])
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option("--max-batch-size", help=HELP["max_batch_size"])
    ] = None,
    max_batch_tokens: Annotated[
        int | None, typer.Option("--max-batch-tokens", help=HELP["max_batch_tokens"])
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option("--max-wait-ms", help=HELP["max_wait_ms"])
    ] = None,
    max_queue: Annotated[int | None, typer.Option("--max-queue", help=HELP["max_queue"])] = None,
    request_timeout_s: Annotated[
        float | None, typer.Option("--request-timeout-s", help=HELP["request_timeout_s"])
    ] = None,
    max_k: Annotated[int | None, typer.Option("--max-k", help=HELP["max_k"])] = None,
    max_batch_queries: Annotated[
        int | None, typer.Option("--max-batch-queries", help=HELP["max_batch_queries"])
    ] = None,
    max_input_chars: Annotated[
        int | None, typer.Option("--max-input-chars", help=HELP["max_input_chars"])
    ] = None,
    truncate: Annotated[
        bool | None, typer.Option("--truncate/--no-truncate", help=HELP["truncate"])
    ] = None,
    oversample: Annotated[int | None, typer.Option("--oversample", help=HELP["oversample"])] = None,
    rescore: Annotated[str | None, typer.Option("--rescore", help=HELP["rescore"])] = None,
    ef_search: Annotated[int | None, typer.Option("--ef-search", help=HELP["ef_search"])] = None,
    mode: Annotated[str | None, typer.Option("--mode", help=HELP["mode"])] = None,
    fused_weight: Annotated[
        float | None, typer.Option("--fused-weight", help=HELP["fused_weight"])
    ] = None,
    watch_current: Annotated[
        bool | None, typer.Option("--watch-current/--no-watch-current", help=HELP["watch_current"])
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help=HELP["served_model_name"])
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help=HELP["log_level"])] = None,
    log_queries: Annotated[
        bool | None, typer.Option("--log-queries/--no-log-queries", help=HELP["log_queries"])
    ] = None,
    retry_after_s: Annotated[
        int | None, typer.Option("--retry-after-s", help=HELP["retry_after_s"])
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option("--max-body-bytes", help=HELP["max_body_bytes"])
    ] = None,
    filter_exact_max: Annotated[
        int | None, typer.Option("--filter-exact-max", help=HELP["filter_exact_max"])
    ] = None,
    max_candidates: Annotated[
        int | None, typer.Option("--max-candidates", help=HELP["max_candidates"])
    ] = None,
    control_dir: Annotated[
        Path | None, typer.Option("--control-dir", help=HELP["control_dir"])
    ] = None,
    reload_poll_s: Annotated[
        float | None, typer.Option("--reload-poll-s", help=HELP["reload_poll_s"])
    ] = None,
) -> None:
    """Serve /search, /search/batch and /v1/embeddings over a bundle with an ONNX student.

    Every flag is also an environment variable: TANDEM_ plus the flag name in
    capitals with underscores (TANDEM_API_KEY, TANDEM_MAX_QUEUE, ...).
    """
    flags = {name: value for name, value in locals().items() if value is not None}
    if flags.get("variant") == []:
        flags.pop("variant")
    try:
        settings = ServerSettings(**flags)
    except ValidationError as exc:
        _fail(f"invalid settings:\n{exc}")
    try:
        version_dir = preflight(
            settings.bundle, settings.student, settings.variant, settings.allow_unaligned
        )
    except StartupCheckError as exc:
        _fail(str(exc))
    logger.info("bundle %s verified; starting %d worker(s)", version_dir, settings.workers)
    run_dir = Path(tempfile.mkdtemp(prefix="tandem-serve-")) if settings.workers > 1 else None
    env = settings.to_env()
    env["TANDEM_VERIFIED_VERSION_DIR"] = str(version_dir)
    if run_dir is not None and settings.control_dir is None:
        env["TANDEM_CONTROL_DIR"] = str(run_dir / "control")
    _prepare_multiprocess_metrics(run_dir)
    os.environ.update(env)  # workers (and the factory) read their settings from here
    try:
        run(settings)
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)


def run(settings: ServerSettings) -> None:
    """Start uvicorn on the app factory; several workers get tandem's supervisor."""
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        timeout_graceful_shutdown=max(5, int(settings.request_timeout_s) + 1),
        access_log=settings.log_level == "debug",
    )
    if settings.workers == 1:
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run does
            server.run()
        if not server.started:
            raise typer.Exit(STARTUP_FAILURE)  # the app could not load
        return
    sock = config.bind_socket()
    supervisor = Supervisor(config, sockets=[sock])
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise typer.Exit(STARTUP_FAILURE)  # a worker could not load: uvicorn stopped them all


class Supervisor(Multiprocess):
    """uvicorn's supervisor, but SIGHUP hot-swaps the bundle in every worker.

    uvicorn's default replaces workers on SIGHUP; a worker that then fails to
    load would be lost. Forwarding the signal lets each worker load the new
    bundle beside the old one and keep the old one if loading fails.
    """

    def handle_hup(self) -> None:
        logger.info("SIGHUP: asking %d worker(s) to reload the bundle", len(self.processes))
        for process in self.processes:
            if process.pid is not None:
                try:
                    os.kill(process.pid, signal.SIGHUP)
                except ProcessLookupError:
                    continue


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config plus tandem's loggers, so workers log to stderr too."""
    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("tandem",):
        config["loggers"][name] = {
            "handlers": ["default"],
            "level": level.upper(),
            "propagate": False,
        }
    return config


def _prepare_multiprocess_metrics(run_dir: Path | None) -> None:
    """Give several workers a clean shared metrics folder (set before they start).

    A folder set by the user is emptied first: files of a previous run would
    otherwise be summed into this one's counters.
    """
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        folder = Path(existing)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    elif run_dir is not None:
        folder = run_dir / "metrics"
        folder.mkdir(parents=True)
        os.environ[MULTIPROC_ENV] = str(folder)


def _fail(message: str) -> NoReturn:
    typer.echo(f"tandem serve: {message}", err=True)
    raise typer.Exit(EXIT_CONFIG)
