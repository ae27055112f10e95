"""`zsplg eval`: score predicted or pseudo labels against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsplg.cli.console import ConsoleReporter, console, fail, read_settings, user_mistakes_fail
from zsplg.cli.settings import CommandSettings
from zsplg.evaluate import EvalConfig

HELP = {
    "pred": "Folder of predicted index PNGs (KEY.png), or a `zsplg label` output folder "
            "(its labels/ are scored).",
    "pair_list": "Pair-list with ground-truth labels.",
    "classes": "classes.txt or a YAML class spec.",
    "json_path": "Metrics JSON (default: next to PRED).",
    "confidence_floors": "For a `zsplg label` folder: also score only pixels at least this "
                         "confident, e.g. 0.5,0.7,0.9 (with the share kept), to choose "
                         "`zsplg label --min-confidence`.",
}
SETTINGS = CommandSettings(EvalConfig, HELP, flags={"pair_list": "list", "json_path": "json"},
                           path_keys=("pred", "pair_list", "classes", "json_path"))


def evaluate(config_file: Path | None = None, **typed: Any) -> None:
    """mIoU, per-class IoU, pixel accuracy and coverage; JSON plus a confusion CSV."""
    from zsplg.evaluate import NoImageScoredError, run_eval

    settings = read_settings(SETTINGS, config_file, typed)
    with user_mistakes_fail():
        try:
            metrics, written = run_eval(EvalConfig(**settings), ConsoleReporter())
        except NoImageScoredError as exc:  # nothing scored is a failed run, not a bad option
            fail(str(exc), 1)
    console.print(f"mIoU {metrics['miou']:.2f}  ->  {written}" if metrics["miou"] is not None
                  else f"no class could be evaluated -> {written}")


evaluate.__signature__ = SETTINGS.signature()  # type: ignore[attr-defined]
