"""The terminal: the one console every command writes to, its error line, and the
reporter that turns library progress into rich progress bars.

Output never wraps when stderr is not a terminal (a log file, a pipe, CI): a
wrapped line splits paths and error messages, which breaks grep and the tests
that read them. On a terminal rich's own width applies.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Task as RichTask
from rich.table import Table
from rich.text import Text

from zsplg.runtime.progress import Level, Reporter, Task

if TYPE_CHECKING:
    from zsplg.cli.settings import CommandSettings

INTERRUPTED = "interrupted: finished outputs are kept; run the same command again to resume"
# Wide enough for any path; tables only take the width their content needs.
_UNWRAPPED_WIDTH = 100_000


def make_console(stderr: bool = True) -> Console:
    """Soft-wrapped and unbounded off a terminal, rich's width on one."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, soft_wrap=True, width=_UNWRAPPED_WIDTH)


console = make_console()  # messages, progress and errors


def fail(message: str, code: int = 2) -> NoReturn:
    """A user mistake: one line on stderr and exit ``code``, never a traceback."""
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def typed_params(ctx: typer.Context) -> set[str]:
    """The parameters the user gave on the command line (not left at their defaults).

    Compared by name: typer ships its own copy of click, whose ParameterSource is
    not click's.
    """
    given = ("COMMANDLINE", "ENVIRONMENT")
    return {name for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", None) in given}


class RateColumn(ProgressColumn):
    """Items per second, the figure users compare across machines."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: RichTask) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-" if speed is None else f"{speed:.2f} {self.unit}/s", style="cyan")


def make_progress(console: Console | None = None, unit: str = "img") -> Progress:
    """One progress bar style for every long command: count, rate and ETA (bytes for "B")."""
    counted = ((DownloadColumn(), TransferSpeedColumn()) if unit == "B"
               else (MofNCompleteColumn(), RateColumn(unit)))
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *counted,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


class _BarTask(Task):
    def __init__(self, progress: Progress, task_id) -> None:
        self.progress, self.task_id = progress, task_id

    def advance(self, steps: int = 1) -> None:
        self.progress.advance(self.task_id, steps)

    def update(self, completed: int | None = None, total: int | None = None) -> None:
        changes = {k: v for k, v in (("completed", completed), ("total", total)) if v is not None}
        self.progress.update(self.task_id, **changes)


class ConsoleReporter(Reporter):
    """Library progress as rich bars (count, rate, ETA) and log lines on the console."""

    def __init__(self, target: Console | None = None) -> None:
        self.console = target or console
        self._progress: Progress | None = None

    def log(self, message: str, level: Level = "info") -> None:
        text = escape(message)
        out = self._progress.console if self._progress is not None else self.console
        out.print(f"[yellow]{text}[/]" if level == "warning" else text)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        table = Table(title=title)
        for i, column in enumerate(columns):
            table.add_column(escape(column), justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        (self._progress.console if self._progress is not None else self.console).print(table)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "img") -> Iterator[Task]:
        if self._progress is not None:  # nested: a second bar in the same display
            task_id = self._progress.add_task(description, total=total)
            yield _BarTask(self._progress, task_id)
            return
        with make_progress(self.console, unit) as progress:
            self._progress = progress
            try:
                yield _BarTask(progress, progress.add_task(description, total=total))
            finally:
                self._progress = None




def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's to fix (a file, an option, missing weights)."""
    from zsplg.data.errors import InputError
    from zsplg.labeling.settings import ConfigMismatchError
    from zsplg.masks.sam import SamCheckpointError
    from zsplg.runtime.weights import WeightsError

    return (InputError, ValueError, WeightsError, SamCheckpointError, ConfigMismatchError)


@contextmanager
def user_mistakes_fail(*outputs: str | Path | None) -> Iterator[None]:
    """Turn the user's mistakes into one line and exit 2, an interrupt into exit 130.

    ``outputs``: folders or files the command writes. One that did not exist
    before and is still empty after a failed start is removed, so a mistake
    never leaves a half-made output behind.
    """
    fresh = [Path(p) for p in outputs if p is not None and not Path(p).exists()]
    try:
        yield
    except user_errors() as exc:
        _remove_empty(fresh)
        fail(str(exc))
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (zsplg.cli.app turns it into this)
        _remove_empty(fresh)
        console.print(str(exc) or INTERRUPTED)
        raise typer.Exit(130) from None
    except BaseException:
        _remove_empty(fresh)
        raise


def _remove_empty(paths: list[Path]) -> None:
    for path in paths:
        try:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:
            pass


def read_settings(settings: CommandSettings, config_file: Path | None,
                  typed: Mapping[str, Any]) -> dict[str, Any]:
    """A command's settings (file < typed options), or one line naming what is wrong."""
    with user_mistakes_fail():
        values = settings.resolve(config_file, typed)
    for key in settings.missing(values):
        fail(f"missing {settings.option_name(key)} (or '{key}:' in a --config file)")
    return values
