"""How library code tells its caller what it is doing, without printing.

Long functions take a ``reporter``; ``None`` means silent, so the library can
run inside a notebook, a service or another tool without writing to its
terminal (the same contract as open_clip's ``use_tqdm=False``). The command
line passes a reporter that draws progress bars with an ETA and prints the
log lines (``zsplg.cli.console.ConsoleReporter``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

Level = Literal["info", "warning"]


class Task:
    """One counted piece of work; the silent base ignores every call."""

    def advance(self, steps: int = 1) -> None:
        """``steps`` more items are done."""

    def update(self, completed: int | None = None, total: int | None = None) -> None:
        """Set the count done so far and/or the total (a search learns its size late)."""


class Reporter:
    """Progress and messages from library code; this base class is silent.

    Messages are plain text (no markup): the reporter decides how they look.
    """

    def log(self, message: str, level: Level = "info") -> None:
        """One line for the user (``warning``: something was skipped or is doubtful)."""

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A small table of already formatted cells (per-class scores, confusions)."""

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "img") -> Iterator[Task]:
        """A counted task: ``with reporter.task("label", total=n) as task: task.advance()``."""
        yield Task()


SILENT = Reporter()


def or_silent(reporter: Reporter | None) -> Reporter:
    """The reporter to use when a caller passed ``None``."""
    return SILENT if reporter is None else reporter
