"""The ``tandem`` command: one entry point whose subcommands follow the packages."""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer
from rich.logging import RichHandler

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
