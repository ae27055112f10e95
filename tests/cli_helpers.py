"""What the CLI test modules share: running a command and reading rich's wrapped output."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from zsplg.cli import app

runner = CliRunner()


def invoke(*args: str | Path):
    """Run `zsplg ARGS...` in-process; the result holds the exit code and the output."""
    return runner.invoke(app, [str(a) for a in args])


def squash(text: str) -> str:
    """Console output without whitespace: rich wraps long lines (and paths) anywhere."""
    return "".join(text.split())
