"""``zsplg train`` and ``zsplg predict``.

Every :class:`TrainConfig` key is both a YAML key and a ``--flag``; the flags
are generated from the dataclass so the two lists can never drift apart.
Flags given on the command line override the file.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from zsplg.cli.console import console
from zsplg.data.errors import InputError
from zsplg.train.config import TrainConfig

HELP = {
    "labelled": "Pair-list of labelled images: 'image label' a line.",
    "classes": "classes.txt or a YAML class spec.",
    "out": "Run folder: config.yaml, checkpoints/, history.jsonl, tensorboard/, metrics.json.",
    "unlabelled": "Unlabelled images: a folder or an image list (no mask files needed).",
    "pseudo_labels": "Folder written by `zsplg label` (method enhanced).",
    "pseudo_min_confidence": "Pseudo-label pixels below this confidence (the label run's "
                             "confidence maps) are left to the teacher, as in unimatch.",
    "val": "Validation pair-list.",
    "method": "supervised, unimatch or enhanced.",
    "policy": "Enhanced labels: replace, confident-teacher or agreement.",
    "backbone": "efficientnet-lite0/1/2, resnet50, resnet101 or timm:NAME.",
    "pretrained": "Start from ImageNet weights.",
    "backbone_weights": "Local backbone weights file (else the packaged/cached ones).",
    "crop_size": "Training crop side.",
    "head_channels": "Width of ASPP and the decoder (256 as in the reference; 128 for CPU budgets).",
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
    "device": "auto, cpu, cuda.",
    "overwrite": "Start again in a folder that holds another run.",
}


def _option_type(annotation: Any) -> Any:
    """The dataclass field's type as an optional CLI type (None = not given)."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, {"typing": typing}, {})  # noqa: S307 - our own annotations
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint | None


def _signature() -> inspect.Signature:
    params = [inspect.Parameter(
        "config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Path | None, typer.Option("--config", help="YAML config; flags override it.")])]
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        base = _option_type(f.type)
        decl = (f"{flag}/--no-{f.name.replace('_', '-')}",) if base == (bool | None) else (flag,)
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[base, typer.Option(*decl, help=HELP.get(f.name, ""),
                                                     show_default=False)]))
    return inspect.Signature(params)


def resolve_train_config(config_file: Path | None, flags: dict[str, Any]) -> TrainConfig:
    """Defaults, then the YAML file, then the flags given; validated before any work."""
    from zsplg.cli.settings import load_config

    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_config(config_file, TrainConfig))
    values.update({k: v for k, v in flags.items() if v is not None})
    config = TrainConfig(**values)
    config.validate()
    return config


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def train_command(**kwargs: Any) -> None:
    """Train a DeepLabV3+ from labelled images, unlabelled images and pseudo labels.

    The same command resumes an interrupted run and runs under
    `torchrun --nproc-per-node N`.
    """
    from zsplg.runtime.weights import WeightsError
    from zsplg.train.loop import ResumeMismatchError, train

    config_file = kwargs.pop("config_file")
    try:
        config = resolve_train_config(config_file, kwargs)
        result = train(config, console)
    except (InputError, ValueError, ResumeMismatchError, WeightsError,
            FloatingPointError) as exc:
        _fail(str(exc))
    miou = result.get("miou")
    console.print(f"done: {result['steps']} steps"
                  + (f", final val mIoU {miou:.2f}" if miou is not None else "")
                  + f" -> {config.out}")


train_command.__signature__ = _signature()  # type: ignore[attr-defined]


def predict_command(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoints/best.pt or latest.pt of a run.")],
    images_dir: Annotated[Path | None, typer.Argument(help="Folder of images (recursive).")] = None,
    pair_list: Annotated[Path | None, typer.Option("--list", help="Image list instead of a folder.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("predictions"),
    mode: Annotated[str, typer.Option(help="whole or sliding (windowed, for large images).")] = "whole",
    window: Annotated[int, typer.Option(help="Sliding window side.")] = 513,
    stride: Annotated[int | None, typer.Option(help="Sliding stride (default 2/3 window).")] = None,
    overlays: Annotated[bool, typer.Option(help="Also write colour overlays.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Write OUT/labels/*.png (class ids) and OUT/overlays/*.jpg for new images."""
    from zsplg.train.predict import PredictConfig, run_predict

    if (images_dir is None) == (pair_list is None):
        _fail("give either IMAGES_DIR or --list FILE (exactly one)")
    if mode not in ("whole", "sliding"):
        _fail(f"--mode: {mode!r} is not one of whole, sliding")
    config = PredictConfig(checkpoint=str(checkpoint), out=str(out),
                           images_dir=str(images_dir) if images_dir else None,
                           pair_list=str(pair_list) if pair_list else None, mode=mode,
                           window=window, stride=stride, overlays=overlays, device=device)
    try:
        info = run_predict(config, console)
    except (InputError, ValueError) as exc:
        _fail(str(exc))
    counts = info["counts"]
    console.print(f"predicted {counts['predicted']}, failed {counts['failed']} -> {out}")
