"""Terminal output for ``tandem index``: progress bars with docs/s and ETA, one-line messages.

Library code reports progress through the small ``Progress`` protocol of
``tandem.indexer.build``; only the CLI turns it into rich output, on stderr, so
stdout stays clean for ``info --json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


@cache
def stderr() -> Console:
    """Progress, warnings and errors (created on first use: Console reads the environment)."""
    return Console(stderr=True)


@cache
def stdout() -> Console:
    """Results: the info table, ``--json``, verification reports."""
    return Console()


class RateColumn(ProgressColumn):
    """Documents per second (rich's built-in speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} docs/s" if speed else "- docs/s", style="cyan")


class RichProgress:
    """Adapts the builder's phases to one rich task per phase."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def phase(self, name: str, total: int, done: int = 0) -> None:
        self.finish()
        self.task = self.progress.add_task(name, total=total or None, completed=done)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def finish(self) -> None:
        if self.task is None:
            return
        task = next(t for t in self.progress.tasks if t.id == self.task)
        if task.total is None:  # a phase of unknown size ends full
            self.progress.update(self.task, total=task.completed)
        self.progress.stop_task(self.task)
        self.task = None


@contextmanager
def rich_progress() -> Iterator[RichProgress]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr(), transient=False) as progress:
        adapter = RichProgress(progress)
        yield adapter
        adapter.finish()


def say(target: Console, prefix: str, message: str, style: str = "") -> None:
    """One unwrapped line; user text is never parsed as rich markup."""
    target.print(Text.assemble((prefix, style), message), soft_wrap=True, highlight=False)
