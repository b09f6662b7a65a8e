"""The ``tandem`` command: one entry point whose subcommands follow the packages."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import typer
from rich.logging import RichHandler
from rich.table import Table

from tandem.client import TandemClient
from tandem.console import say, stderr, stdout
from tandem.data.cli import app as data_app
from tandem.demo import demo
from tandem.errors import TandemError, exit_code
from tandem.indexer.cli import app as index_app
from tandem.server.cli import serve
from tandem.toolchain.cli import app as models_app


class _Tandem(typer.Typer):
    """The command, with one rule for errors tandem raises on purpose.

    A ``TandemError`` that ends a command is printed as its message (no
    traceback: the message says what to do) and exits with ``exit_code``: 2 to
    fix the command or its inputs, 75 to retry later, 1 otherwise.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except TandemError as exc:
            sys.stderr.write(f"tandem: {exc.message}\n")
            sys.exit(exit_code(exc))


app = _Tandem(
    name="tandem",
    help="Asymmetric teacher/student retrieval: index with a teacher, query with a student.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(
    models_app, name="models", help="Resolve, export, quantize, align and inspect encoders."
)
app.add_typer(index_app, name="index", help="Build and maintain index bundles.")
app.add_typer(data_app, name="data", help="Fetch public evaluation datasets (BEIR).")
app.command("serve", help="Serve /search over a bundle with an ONNX student.")(serve)
app.command("demo", help="Index the sample corpus, serve it, print a curl.")(demo)

try:
    from tandem.evaluation.cli import align_report_command, eval_command
except ImportError as missing:  # serving installs ship without the eval extra
    reason = str(missing)

    def _needs_eval_extra() -> None:
        """Stand-in that says which extra is missing."""
        raise typer.BadParameter(f"{reason}: install it with pip install 'tandem[eval]'")

    eval_command = align_report_command = _needs_eval_extra  # type: ignore[assignment]


app.command("eval", help="Retrieval quality by mode × variant on a BEIR split.")(eval_command)
models_app.command(
    "align-report", help="How close aligned students get to the teacher: cosine and nDCG@10."
)(align_report_command)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )


@app.command("search", help="Query a running server and print the hits as a table.")
def search(
    query: str = typer.Argument(..., help="The query text."),
    url: str = typer.Option(
        "http://localhost:8080", "--url", envvar="TANDEM_URL", help="Server URL."
    ),
    k: int = typer.Option(10, "--k", "-k", help="Results to show."),
    variant: str | None = typer.Option(None, "--variant", help="Index variant (default: server)."),
    filters: list[str] = typer.Option(  # noqa: B008
        [], "--filter", help="Metadata equality key=value (repeatable); values parse as JSON."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="TANDEM_API_KEY", help="Bearer key; prefer TANDEM_API_KEY."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the response as JSON."),
) -> None:
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    try:
        with TandemClient(url, api_key=api_key) as client:
            response = client.search(
                query, k=k, variant=variant, filter=_parse_filters(filters) or None
            )
    except TandemError as exc:
        say(stderr(), "error: ", str(exc), "bold red")
        raise typer.Exit(1) from None
    if as_json:
        stdout().print_json(response.model_dump_json())
        return
    table = Table(
        title=f"{len(response.results)} results · {response.variant}"
        f"{' rescored' if response.rescored else ''} · {response.timings_ms.total:.1f} ms",
        title_justify="left",
        expand=True,
    )
    table.add_column("#", justify="right", style="dim")
    table.add_column("score", justify="right", style="cyan")
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("text", overflow="fold", ratio=3)
    table.add_column("metadata", style="dim", overflow="fold", ratio=1)
    for rank, hit in enumerate(response.results, 1):
        meta = json.dumps(hit.metadata, ensure_ascii=False) if hit.metadata else ""
        table.add_row(str(rank), f"{hit.score:.4f}", hit.id, hit.text or "", meta)
    stdout().print(table)


def _parse_filters(pairs: list[str]) -> dict[str, str | int | float | bool]:
    """``key=value`` pairs; ``year=2020`` is the number 2020, ``topic=climate`` a string."""
    parsed: dict[str, str | int | float | bool] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: expected key=value", param_hint="--filter")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        parsed[key] = value if isinstance(value, str | int | float | bool) else raw
    return parsed
