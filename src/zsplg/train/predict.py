"""``zsplg predict``: a trained checkpoint over new images, written like ``zsplg label``.

Outputs mirror the label command (index PNGs under labels/, a run.json,
errors.jsonl) so every downstream tool (eval, export, report) reads both.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zsplg import IGNORE_INDEX
from zsplg.data.errors import InputError
from zsplg.data.images import read_image
from zsplg.data.labels import atomic_write_bytes, atomic_write_text, write_label_png
from zsplg.data.overlay import overlay
from zsplg.data.run_folder import ERRORS_FILE, LABELS, RUN_FILE
from zsplg.data.sources import Sample, resolve_sources
from zsplg.runtime.device import resolve_device
from zsplg.runtime.progress import Reporter, or_silent
from zsplg.train.checkpoint import load_checkpoint
from zsplg.train.config import PredictConfig
from zsplg.train.inference import predict_logits
from zsplg.train.model import build_model

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The trained model (eval mode) and its checkpoint metadata."""
    state = load_checkpoint(checkpoint)
    args = state["model_args"]
    model = build_model(args["backbone"], args["num_classes"], pretrained=False,
                        fp_dropout=args.get("fp_dropout", 0.5),
                        head_channels=args.get("head_channels", 256))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InputError(checkpoint, f"weights do not fit a {args['backbone']} model: "
                                     f"{str(exc).splitlines()[0]}") from exc
    return model.to(device).eval(), state


def normalise(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float, ImageNet statistics (as in training)."""
    x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)


def predict_image(model: torch.nn.Module, image: np.ndarray, device: str, mode: str = "whole",
                  window: int = 513, stride: int | None = None) -> np.ndarray:
    logits = predict_logits(model, normalise(image).to(device), mode, window, stride)
    return logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)


def run_predict(config: PredictConfig, reporter: Reporter | None = None) -> dict:
    """Predict every image; a failing image is recorded in errors.jsonl, never fatal.

    Raises ValueError for bad settings (``zsplg.runtime.device.DeviceError`` for an
    unusable device) and InputError for an unreadable checkpoint or image source.
    """
    config.validate()
    reporter = or_silent(reporter)
    device = resolve_device(config.device)
    model, state = load_model(config.checkpoint, device)
    samples: list[Sample] = resolve_sources(config.images_dir, config.pair_list)
    out = Path(config.out)
    (out / LABELS).mkdir(parents=True, exist_ok=True)
    errors_path = out / ERRORS_FILE
    failures: list[dict] = []
    started = time.time()
    with reporter.task("predict", total=len(samples)) as task:
        for sample in samples:
            try:
                image = read_image(sample.image)
                label = predict_image(model, image, device, config.mode, config.window,
                                      config.stride)
                write_label_png(out / LABELS / f"{sample.key}.png", label)
                if config.overlays:
                    path = out / "overlays" / f"{sample.key}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    buffer = _jpeg_bytes(overlay(image, label, unpainted=(IGNORE_INDEX,)))
                    atomic_write_bytes(path, buffer)
            except InputError as exc:
                failures.append({"image": str(sample.image), "error": str(exc)})
                reporter.log(f"skipped {exc}", level="warning")
            task.advance()
    atomic_write_text(errors_path, "".join(json.dumps(f) + "\n" for f in failures))
    info = {"command": "predict", "config": asdict(config),
            "model": state["model_args"], "class_names": state.get("class_names"),
            "trained_steps": state.get("step"),
            "counts": {"images": len(samples), "predicted": len(samples) - len(failures),
                       "failed": len(failures)},
            "seconds": round(time.time() - started, 2)}
    atomic_write_text(out / RUN_FILE, json.dumps(info, indent=2))
    return info


def _jpeg_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
