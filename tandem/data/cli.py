"""``tandem data``: fetch the public datasets evaluation and the dataset tests read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tandem.console import say, stderr, stdout
from tandem.data.fetch import FetchError, fetch_dataset

app = typer.Typer(no_args_is_help=True)


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="BEIR dataset name, e.g. scifact.")],
    to: Annotated[
        Path | None,
        typer.Option(help="Parent folder [default: $TANDEM_DATA, else $TANDEM_HOME/data]."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Archive URL (http, https or file) [default: BEIR's public zip]."),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(help="sha256 of the archive; needed where no checksum is pinned."),
    ] = None,
) -> None:
    """Download a BEIR zip, verify its checksum, unpack it into PARENT/NAME; print the folder."""
    try:
        with stderr().status(f"fetching {name}"):  # stdout carries only the folder
            folder = fetch_dataset(name, to, url, sha256)
    except FetchError as exc:
        say(stderr(), "error: ", str(exc), "bold red")
        raise typer.Exit(code=2) from exc
    say(stdout(), "", str(folder))
