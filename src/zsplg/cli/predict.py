"""`zsplg predict`: a trained model's labels (and overlays) for new images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsplg.cli.console import ConsoleReporter, console, read_settings, user_mistakes_fail
from zsplg.cli.settings import CommandSettings
from zsplg.train.config import PredictConfig

HELP = {
    "checkpoint": "checkpoints/best.pt or latest.pt of a `zsplg train` run.",
    "images_dir": "Folder of images (recursive).",
    "pair_list": "Image list instead of a folder.",
    "out": "Output folder.",
    "mode": "whole or sliding (windowed, for large images).",
    "window": "Sliding window side.",
    "stride": "Sliding stride (default 2/3 window).",
    "overlays": "Also write colour overlays.",
    "device": "auto, cpu, cuda, cuda:N or mps.",
}
SETTINGS = CommandSettings(PredictConfig, HELP, flags={"pair_list": "list"},
                           arguments=("checkpoint", "images_dir"),
                           path_keys=("checkpoint", "out", "images_dir", "pair_list"),
                           exclusive=(("images_dir", "pair_list"),))


def predict(config_file: Path | None = None, **typed: Any) -> None:
    """Write OUT/labels/*.png (class ids) and OUT/overlays/*.jpg for new images."""
    from zsplg.train.predict import run_predict

    settings = read_settings(SETTINGS, config_file, typed)
    config = PredictConfig(**settings)
    with user_mistakes_fail(config.out):
        info = run_predict(config, ConsoleReporter())
    counts = info["counts"]
    console.print(f"predicted {counts['predicted']}, failed {counts['failed']} -> {config.out}")


predict.__signature__ = SETTINGS.signature()  # type: ignore[attr-defined]
