"""The `zsplg` command line: one module per command, over the public API."""

from zsplg.cli.app import app, main

__all__ = ["app", "main"]
