"""`zsplg report`: one self-contained HTML page for a label, eval or train run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsplg.cli.console import ConsoleReporter, console, fail, read_settings, user_mistakes_fail
from zsplg.cli.settings import CommandSettings
from zsplg.report import ReportConfig

HELP = {
    "run_dir": "A label, eval or train run folder (or an eval JSON).",
    "out": "HTML file (default: RUN_DIR/report.html).",
    "images": "Images folder (default: the run's own images).",
    "pair_list": "Pair-list of the images (its labels are the ground truth).",
    "gt_list": "Pair-list whose labels are the ground truth.",
    "classes": "Class spec (default: the one run.json recorded).",
    "gallery": "Images in the gallery (0 = none): the worst, median and best thirds.",
    "thumb_size": "Gallery thumbnail long side, pixels.",
}
SETTINGS = CommandSettings(ReportConfig, HELP, flags={"pair_list": "list"}, arguments=("run_dir",),
                           path_keys=("run_dir", "out", "images", "pair_list", "gt_list",
                                      "classes"))


def report(config_file: Path | None = None, **typed: Any) -> None:
    """One self-contained HTML page: settings, metrics, charts, heat map, gallery."""
    from zsplg.report import write_report

    settings = read_settings(SETTINGS, config_file, typed)
    config = ReportConfig(**settings)
    if config.images is not None and config.pair_list is not None:
        fail("give either --images DIR or --list PAIRS, not both")
    with user_mistakes_fail():
        written = write_report(config.run_dir, config.out, config.options(), ConsoleReporter())
    console.print(f"report -> {written}")


report.__signature__ = SETTINGS.signature()  # type: ignore[attr-defined]
