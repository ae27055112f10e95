"""`zsplg export`: labels to COCO JSON (RLE) or colour overlays, or COCO JSON back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsplg.cli.console import ConsoleReporter, console, read_settings, user_mistakes_fail
from zsplg.cli.settings import CommandSettings
from zsplg.export import ExportConfig

HELP = {
    "source": "A `zsplg label` output or folder of index PNGs; a COCO JSON for --to index.",
    "to": "coco (one JSON, RLE masks), overlay (blended images), index (COCO JSON -> index "
          "PNGs).",
    "out": "COCO JSON file (coco) or output folder (overlay, index).",
    "classes": "Class spec (default: the one run.json recorded).",
    "images": "Images folder (default: the run's own images).",
    "pair_list": "Pair-list of the images instead of a folder.",
    "with_background": "coco: export the background class as a category too.",
    "per_component": "coco: one annotation per connected region instead of per class.",
    "alpha": "overlay: label colour weight, 0..1.",
    "image_format": "overlay: jpg or png.",
}
SETTINGS = CommandSettings(ExportConfig, HELP, flags={"pair_list": "list", "image_format": "format"},
                           arguments=("source",),
                           path_keys=("source", "out", "classes", "images", "pair_list"))


def export(config_file: Path | None = None, **typed: Any) -> None:
    """Convert labels to COCO JSON (RLE) or colour overlays, or COCO JSON back to index PNGs."""
    from zsplg.export import run_export

    settings = read_settings(SETTINGS, config_file, typed)
    config = ExportConfig(**settings)
    with user_mistakes_fail():
        summary = run_export(config, ConsoleReporter())
    out = config.out
    if config.to == "coco":
        console.print(f"{summary['images']} images, {summary['annotations']} annotations, "
                      f"{summary['categories']} categories -> {out}")
        if summary["images"] and not summary["images_with_file"]:
            console.print("[yellow]images not found: file_name is KEY.png; pass --images "
                          "or --list for the real file names[/]")
    elif config.to == "overlay":
        console.print(f"{summary['images']} overlays -> {out}")
    else:
        console.print(f"{summary['images']} index PNGs -> {out}")
    if summary["failed"]:
        console.print(f"[yellow]{len(summary['failed'])} skipped (listed above)[/]")


export.__signature__ = SETTINGS.signature()  # type: ignore[attr-defined]
