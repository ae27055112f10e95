"""`zsplg demo`: the whole labelling job on images that installed packages ship."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsplg.cli.console import ConsoleReporter, user_mistakes_fail
from zsplg.cli.settings import CommandSettings
from zsplg.demo import DemoConfig

SETTINGS = CommandSettings(DemoConfig, {"out": "Where the demo writes its outputs."},
                           path_keys=("out",))


def demo(config_file: Path | None = None, **typed: Any) -> None:
    """Label and evaluate a small sample made from images that installed packages ship."""
    from zsplg.demo import run_demo

    with user_mistakes_fail():
        config = DemoConfig(**SETTINGS.resolve(config_file, typed))
        run_demo(Path(config.out), ConsoleReporter())


demo.__signature__ = SETTINGS.signature()  # type: ignore[attr-defined]
