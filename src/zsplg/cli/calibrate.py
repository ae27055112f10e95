"""`zsplg calibrate`: tune the labeller on the user's labelled images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsplg.calibration.settings import CalibrateConfig
from zsplg.cli.console import ConsoleReporter, read_settings, user_mistakes_fail
from zsplg.cli.label import HELP as LABEL_HELP
from zsplg.cli.settings import CommandSettings

HELP = {
    **{key: LABEL_HELP[key] for key in ("sam_checkpoint", "clip_checkpoint", "points_per_side",
                                        "overlap", "uncovered", "unknown", "max_side", "device",
                                        "precision")},
    "pair_list": "Labelled pair-list ('image label' a line).",
    "classes": "classes.txt or a YAML class spec.",
    "out": "Calibration file to write (JSON).",
    "masks": "Mask generator, as for `label` (calibrate with the backends you label with).",
    "vl": "Vision-language backend, as for `label`.",
    "mode": "auto (whichever of the other four scores best, cross-validated), zero-shot, few-shot, "
            "fused, or uncalibrated (keep the defaults; only the reliability table is fitted).",
    "folds": "Cross-validation folds over the labelled images.",
    "seed": "Seed of the fold split.",
    "cache_dir": "Keep each labelled image's masks, features and ground truth here, so "
                 "recalibrating skips them.",
    "cache_masks": "Cache masks per image content and settings.",
}
SETTINGS = CommandSettings(
    CalibrateConfig, HELP, flags={"pair_list": "list"},
    path_keys=("pair_list", "classes", "out", "cache_dir", "sam_checkpoint", "clip_checkpoint"))


def calibrate(config_file: Path | None = None, **typed: Any) -> None:
    """Tune threshold, class offsets, prompt templates and a few-shot head on labelled images."""
    from zsplg.calibration.run import run_calibrate

    settings = read_settings(SETTINGS, config_file, typed)
    with user_mistakes_fail():
        run_calibrate(CalibrateConfig(**settings), ConsoleReporter())


calibrate.__signature__ = SETTINGS.signature()  # type: ignore[attr-defined]
