"""`zsplg label`: images to pseudo labels (OUT/labels, OUT/confidence, OUT/run.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsplg.choices import OVERLAP_POLICIES, UNCOVERED_POLICIES
from zsplg.cli.console import (
    ConsoleReporter,
    console,
    fail,
    read_settings,
    user_mistakes_fail,
)
from zsplg.cli.settings import CommandSettings
from zsplg.data.run_folder import ERRORS_FILE
from zsplg.labeling.settings import CONFIG_PATH_KEYS, LabelConfig

HELP = {
    "images_dir": "Folder of images (recursive).",
    "pair_list": "Pair-list: 'image \\[label]' a line.",
    "classes": "classes.txt or a YAML class spec (required, here or in --config).",
    "out": "Output folder (required, here or in --config).",
    "masks": "Mask generator: auto, sam, sam-vit-b/l/h, sam2 (= sam2.1-tiny), sam2.1-small, "
             "superpixel. auto: SAM, else SAM 2.1, when its weights are present.",
    "vl": "Vision-language backend: auto, clip-gem, clip-maskclip, conse, conse-lite0/1/2. "
          "auto: CLIP+GEM when its weights are present.",
    "sam_checkpoint": "Local SAM or SAM 2.1 checkpoint (else the weights cache); its file name "
                      "picks the model size.",
    "clip_checkpoint": "Local OpenAI CLIP ViT-B/16 checkpoint (else the weights cache).",
    "points_per_side": "SAM everything-mode grid.",
    "cache_masks": "Cache masks per image content and settings, so relabelling with other "
                   "classes or thresholds skips the mask stage.",
    "background_threshold": "Background threshold (backend default if unset).",
    "temperature": "Softmax temperature (backend default if unset).",
    "overlap": f"Overlap policy: {', '.join(OVERLAP_POLICIES)}.",
    "uncovered": f"Uncovered pixels: {', '.join(UNCOVERED_POLICIES)}.",
    "unknown": "Specs without a background class: a mask no class matches becomes 255 "
               "(ignore) or its best class (best-class).",
    "min_confidence": "Pixels labelled with less confidence become 255 (ignore); the "
                      "confidence maps keep every value.",
    "max_side": "Images are processed at most this long side.",
    "device": "auto, cpu, cuda, cuda:N or mps.",
    "precision": "Image encoders' precision (SAM, SAM 2.1, CLIP): auto (bf16 on a GPU, fp32 "
                 "on CPU), fp32, bf16, fp16. Mask decoding, filters and naming stay fp32.",
    "overwrite": "Relabel a folder made with other settings.",
    "calibration": "Calibration file from `zsplg calibrate` (thresholds, offsets, templates, "
                   "few-shot head).",
    "calibrate_on": "Labelled pair-list: calibrate on it first (writes OUT/calibration.json, "
                    "reused on resume).",
}

SETTINGS = CommandSettings(
    LabelConfig, HELP, flags={"pair_list": "list", "background_threshold": "threshold"},
    arguments=("images_dir",), hidden=frozenset({"templates"}), path_keys=CONFIG_PATH_KEYS,
    exclusive=(("images_dir", "pair_list"),))


def label(config_file: Path | None = None, **typed: Any) -> None:
    """Write OUT/labels/*.png (class ids, 255 = ignore), OUT/confidence/*.png and OUT/run.json."""
    from zsplg.pipeline import label as run_label

    settings = read_settings(SETTINGS, config_file, typed)
    if (settings.get("images_dir") is None) == (settings.get("pair_list") is None):
        fail("give either IMAGES_DIR or --list PAIRS (exactly one)")
    with user_mistakes_fail(settings["out"]):
        config = LabelConfig(**settings)
        info = run_label(config, ConsoleReporter(),
                         config_file=str(config_file.resolve()) if config_file else None)
    counts = info["counts"]
    out = Path(config.out)
    console.print(f"labelled {counts['labelled']}, already done {counts['already_done']}, "
                  f"failed {counts['failed']} -> {out}")
    if counts["failed"]:
        console.print(f"[yellow]failures are listed in {out / ERRORS_FILE}[/]")


label.__signature__ = SETTINGS.signature()  # type: ignore[attr-defined]
