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
import inspect
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

import typer
import uvicorn
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from tandem.server.metrics import MULTIPROC_ENV
from tandem.server.settings import ENV_PREFIX, ServerSettings
from tandem.server.state import StartupCheckError, preflight, preflight_milvus
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from tandem.errors import ConfigError, InvalidInput, TandemError, exit_code

logger = logging.getLogger(__name__)

APP_FACTORY = "tandem.server.app:create_app_from_env"
HTTP_PROTOCOL = "tandem.server.http:BoundedHttpToolsProtocol"


# Settings that are not flags: set by the CLI itself for its workers.
NOT_FLAGS = frozenset({"verified_version_dir"})
# Flags whose negative form reads better than --no-<flag>.
NEGATIVE = {"allow_unaligned": "--require-aligned"}


def _flag_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """The typer type (always optional: unset flags fall back to env and defaults)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Annotated:
        return _flag_type(args[0])
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if get_origin(annotation) is Literal:
        return annotation | None, {}
    if get_origin(annotation) is list:
        return list[str] | None, {}
    if annotation is SecretStr:
        return str | None, {}
    return annotation | None, {}


def _help(name: str, field: FieldInfo) -> str:
    if not field.description:
        raise TypeError(f"ServerSettings.{name} needs a description: it is a flag's help")
    text = field.description[0].upper() + field.description[1:]
    return f"{text} (env {ENV_PREFIX}{name.upper()})."


def settings_parameters() -> list[inspect.Parameter]:
    """One keyword parameter per ``ServerSettings`` field: a knob is one ``Field``."""
    params = []
    for name, field in ServerSettings.model_fields.items():
        if name in NOT_FLAGS:
            continue
        kind, extra = _flag_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            flag = f"{flag}/{NEGATIVE.get(name, '--no-' + name.replace('_', '-'))}"
        option = typer.Option(flag, help=_help(name, field), show_default=False, **extra)
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind, option],
            )
        )
    return params


def serve(**flags: Any) -> None:
    """Serve /search, /search/batch and /v1/embeddings over a bundle with an ONNX student.

    Every flag is also an environment variable: TANDEM_ plus the flag name in
    capitals with underscores (TANDEM_API_KEY, TANDEM_MAX_QUEUE, ...).
    """
    flags = {name: value for name, value in flags.items() if value is not None}
    if flags.get("variant") == []:
        flags.pop("variant")
    try:
        settings = ServerSettings(**flags)
    except ValidationError as exc:
        _fail(InvalidInput(f"invalid settings:\n{exc}"))
    try:
        if settings.backend == "milvus":
            served = preflight_milvus_settings(settings)
        else:
            assert settings.bundle is not None  # the settings require it for faiss
            version_dir = preflight(
                settings.bundle, settings.student, settings.variant, settings.allow_unaligned
            )
    except StartupCheckError as exc:
        _fail(exc)
    except OSError as exc:  # an unreadable mount (a container's user is not the files' owner)
        where = exc.filename or settings.bundle
        _fail(ConfigError(f"cannot read {where}: {exc.strerror} (serving as uid {os.getuid()})"))
    if settings.backend == "milvus":
        logger.info("Milvus collection %s checked; starting %d worker(s)", served, settings.workers)
    else:
        logger.info("bundle %s verified; starting %d worker(s)", version_dir, settings.workers)
    run_dir = Path(tempfile.mkdtemp(prefix="tandem-serve-")) if settings.workers > 1 else None
    env = settings.to_env()
    if settings.backend != "milvus":
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


def preflight_milvus_settings(settings: ServerSettings) -> str:
    """Connect to Milvus and check the collection against the student before binding a port."""
    return preflight_milvus(
        *settings.milvus_target(),
        settings.student,
        settings.variant,
        settings.allow_unaligned,
    )


_PARAMS = settings_parameters()
serve.__signature__ = inspect.Signature(_PARAMS, return_annotation=None)  # type: ignore[attr-defined]
serve.__annotations__ = {p.name: p.annotation for p in _PARAMS} | {"return": None}


def settings_table() -> str:
    """The README's table of settings, generated from the same fields as the flags."""
    lines = ["| flag | environment | default | what it does |", "|---|---|---|---|"]
    for name, field in ServerSettings.model_fields.items():
        if name in NOT_FLAGS:
            continue
        default = (
            "required" if field.is_required() else field.get_default(call_default_factory=True)
        )
        if default in (None, []):
            default = "-"
        elif isinstance(default, bool):
            default = str(default).lower()
        description = (field.description or "").replace("|", "\\|")
        lines.append(
            f"| `--{name.replace('_', '-')}` | `{ENV_PREFIX}{name.upper()}` | `{default}` "
            f"| {description} |"
        )
    return "\n".join(lines) + "\n"


def run(settings: ServerSettings) -> None:
    """Start uvicorn on the app factory; several workers get tandem's supervisor."""
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        # httptools (C) with h11's bound on the request head; the event loop is uvloop
        # when installed (uvicorn's "auto").
        http=HTTP_PROTOCOL,
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


def _fail(error: TandemError) -> NoReturn:
    typer.echo(f"tandem serve: {error.message}", err=True)
    raise typer.Exit(exit_code(error))


if __name__ == "__main__":  # the README's settings table
    import sys

    sys.stdout.write(settings_table())
