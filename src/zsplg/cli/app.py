"""The `zsplg` command: one typer app over one module per command.

Each command is a thin shell over the public API; this module only assembles
them, answers `--version`, and turns an interrupt (Ctrl-C, or the SIGTERM a
scheduler sends) into one line saying what was kept and how to resume.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from zsplg import __version__
from zsplg.cli.calibrate import calibrate
from zsplg.cli.console import INTERRUPTED, console
from zsplg.cli.demo import demo
from zsplg.cli.evaluate import evaluate
from zsplg.cli.export import export
from zsplg.cli.label import label
from zsplg.cli.predict import predict
from zsplg.cli.report import report
from zsplg.cli.train import train
from zsplg.cli.weights import weights_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Zero-shot pseudo labels for semi-supervised semantic segmentation.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zsplg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Zero-shot pseudo labels for semi-supervised semantic segmentation."""


app.command("label")(label)
app.command("calibrate")(calibrate)
app.command("eval")(evaluate)
app.command("demo")(demo)
app.command("export")(export)
app.command("report")(report)
app.command("train")(train)
app.command("predict")(predict)
app.add_typer(weights_app, name="weights", help="Known model weights: list and fetch.")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: finish or drop the current write


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except KeyboardInterrupt:  # before or after a command's own handling
        console.print(INTERRUPTED)
        sys.exit(130)
