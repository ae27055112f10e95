"""A tiny generated segmentation data set for training tests: squares and discs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zsplg.data.labels import write_confidence_png, write_label_png

CLASSES = ["background", "square", "disc"]


def _scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    label = np.zeros((h, w), np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    side = int(rng.integers(h // 4, h // 2))
    image[y:y + side, x:x + side] = (200, 40, 40)
    label[y:y + side, x:x + side] = 1
    cy, cx, r = int(rng.integers(h // 2, h)), int(rng.integers(w // 2, w)), h // 6
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image[disc] = (40, 40, 220)
    label[disc] = 2
    return image, label


def make_dataset(root: Path, n_labelled: int = 4, n_unlabelled: int = 4, n_val: int = 2,
                 size: tuple[int, int] = (40, 48), seed: int = 0) -> dict[str, Path]:
    """Writes images, labels, lists, pseudo labels (noisy ground truth) and classes.txt."""
    rng = np.random.default_rng(seed)
    h, w = size
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(exist_ok=True)
    unl_dir = root / "unlabelled"
    unl_dir.mkdir(exist_ok=True)
    pseudo = root / "pseudo" / "labels"
    pseudo.mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"labelled": [], "val": []}
    for i in range(n_labelled + n_val):
        image, label = _scene(rng, h, w)
        Image.fromarray(image).save(root / "img" / f"l{i}.png")
        write_label_png(root / "gt" / f"l{i}.png", label)
        which = "labelled" if i < n_labelled else "val"
        lists[which].append(f"img/l{i}.png gt/l{i}.png")
    for i in range(n_unlabelled):
        image, label = _scene(rng, h, w)
        Image.fromarray(image).save(unl_dir / f"u{i}.png")
        noisy = label.copy()
        noisy[rng.random(label.shape) < 0.1] = 255
        write_label_png(pseudo / f"u{i}.png", noisy)
        # as `zsplg label` writes beside labels/: the left half sure, the right half not
        confidence = np.where(np.arange(w)[None, :] < w // 2, 0.9, 0.2) * np.ones((h, 1))
        write_confidence_png(pseudo.parent / "confidence" / f"u{i}.png",
                             confidence.astype(np.float32))
    for name, lines in lists.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"labelled": root / "labelled.txt", "val": root / "val.txt", "unlabelled": unl_dir,
            "pseudo": root / "pseudo", "classes": root / "classes.txt"}


def tiny_config_args(data: dict[str, Path], out: Path, **overrides: object) -> dict[str, object]:
    """Settings small enough for a CPU test: 24 px crops, random-init Lite0, no workers."""
    args: dict[str, object] = dict(
        labelled=str(data["labelled"]), classes=str(data["classes"]), out=str(out),
        unlabelled=str(data["unlabelled"]), pseudo_labels=str(data["pseudo"]),
        val=str(data["val"]), backbone="efficientnet-lite0", pretrained=False,
        crop_size=32, batch_size=2, iters=3, workers=0, checkpoint_every=1, log_every=1,
        tensorboard=False, lr=0.01)
    args.update(overrides)
    return args
