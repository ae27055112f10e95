"""`zsplg train`: semi-supervised DeepLabV3+ training with enhanced labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zsplg.cli.console import ConsoleReporter, console, user_mistakes_fail
from zsplg.cli.settings import CommandSettings
from zsplg.train.config import TrainConfig

HELP = {
    "labelled": "Pair-list of labelled images: 'image label' a line.",
    "classes": "classes.txt or a YAML class spec.",
    "out": "Run folder: config.yaml, checkpoints/, history.jsonl, tensorboard/, metrics.json.",
    "unlabelled": "Unlabelled images: a folder or an image list (no mask files needed).",
    "pseudo_labels": "Folder written by `zsplg label` (method enhanced).",
    "pseudo_min_confidence": "Pseudo-label pixels below this confidence (the label run's "
                             "confidence maps) are left to the teacher, as in unimatch.",
    "pseudo_reliability": "Calibration file whose held-out reliability table weights the "
                          "pseudo labels (policy reliability; default: the label run's "
                          "calibration.json).",
    "val": "Validation pair-list.",
    "method": "supervised, unimatch or enhanced.",
    "policy": "Enhanced labels: reliability, replace, confident-teacher or agreement.",
    "backbone": "efficientnet-lite0/1/2, resnet50, resnet101 or timm:NAME.",
    "pretrained": "Start from ImageNet weights.",
    "backbone_weights": "Local backbone weights file (else the packaged/cached ones).",
    "crop_size": "Training crop side.",
    "head_channels": "Width of ASPP and the decoder (256 as in the reference; 128 for CPU "
                     "budgets).",
    "batch_size": "Labelled images per step (per process).",
    "unlabelled_batch_size": "Unlabelled images per step (default: batch size).",
    "iters": "Optimiser steps.",
    "lr": "Backbone learning rate (SGD, poly decay).",
    "head_lr_multiplier": "Decoder learning rate = lr x this.",
    "conf_thresh": "Teacher confidence threshold.",
    "smoothing": "Label smoothing of the enhanced unlabelled losses.",
    "accumulate": "Gradient accumulation steps.",
    "amp": "Mixed precision: auto (on GPU), on, off.",
    "seed": "Random seed (data order, augmentation, dropout).",
    "workers": "Data-loading worker processes.",
    "val_every": "Validate every N steps (0: five times per run).",
    "checkpoint_every": "Write checkpoints/latest.pt every N steps.",
    "val_mode": "Validation inference: whole or sliding.",
    "device": "auto, cpu, cuda, cuda:N or mps.",
    "overwrite": "Start again in a folder that holds another run.",
}
# Paths in a train --config file are read as given (relative to the working folder).
SETTINGS = CommandSettings(TrainConfig, HELP)


def train(config_file: Path | None = None, **typed: Any) -> None:
    """Train a DeepLabV3+ from labelled images, unlabelled images and pseudo labels.

    The same command resumes an interrupted run and runs under
    `torchrun --nproc-per-node N`.
    """
    from zsplg.train.loop import train as run_train

    with user_mistakes_fail():
        config = TrainConfig(**SETTINGS.resolve(config_file, typed))
        config.validate()
    with user_mistakes_fail(config.out):
        try:
            result = run_train(config, ConsoleReporter())
        except FloatingPointError as exc:  # diverged: the settings are the user's to change
            raise ValueError(str(exc)) from None
    miou = result.get("miou")
    console.print(f"done: {result['steps']} steps"
                  + (f", final val mIoU {miou:.2f}" if miou is not None else "")
                  + f" -> {config.out}")


train.__signature__ = SETTINGS.signature()  # type: ignore[attr-defined]
