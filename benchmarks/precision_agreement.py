"""How much `--precision` changes the masks and the names, against fp32 on the same images.

Only the image encoders run in reduced precision (zsplg.runtime.device.resolve_precision):
SAM's and SAM 2.1's decoders, their predicted-IoU, stability and NMS decisions, and the
naming similarities are fp32. So bf16 or fp16 changes the image embedding, and a
candidate near a threshold can still fall the other way. This script measures that:

- masks: every precision's masks matched to fp32's on the same image (best IoU per
  mask); ``matched`` = share of fp32 masks with an IoU >= 0.9 partner, ``extra`` = share
  of the other precision's masks with none, ``mean_best_iou`` over fp32's masks;
- names: the same fixed masks (the superpixel generator's largest) named through CLIP+GEM
  in each precision; ``label_agreement`` = share of masks given the same class as fp32.

The models are full-size and randomly initialised (no SAM or CLIP weights can be
downloaded where this runs): their predicted IoU rarely passes SAM's 0.88, so the masks
are compared with the filters loosened (``--pred-iou-thresh``, ``--stability-thresh``,
default 0 and 0: only NMS decides) as well as at SAM's defaults. Trained weights give
the filters other values to decide on; with real checkpoints pass ``--sam-checkpoint``
and ``--clip-checkpoint`` to measure those.

    python benchmarks/precision_agreement.py --device cuda --images 4
    python benchmarks/precision_agreement.py --smoke            # CPU, toy models, fp32 vs bf16

Prints JSON; the last line is the whole result on one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_models import random_clip, random_sam  # noqa: E402
from synthetic_images import synthetic_images  # noqa: E402

from zsplg.labeling.annotate import pool_masks  # noqa: E402
from zsplg.masks.base import MaskProposals  # noqa: E402
from zsplg.masks.sam import build_sam_generator  # noqa: E402
from zsplg.masks.superpixel import SuperpixelGenerator  # noqa: E402
from zsplg.runtime.device import resolve_device  # noqa: E402
from zsplg.vl.clip_gem import ClipGemBackend, build_clip_backend  # noqa: E402
from zsplg.vl.prompts import class_prompts  # noqa: E402

NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
         "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
         "train", "tv monitor")


def match_masks(reference: np.ndarray, other: np.ndarray) -> dict:
    """Best IoU of each reference mask among ``other`` and vice versa, (N, H, W) bool."""
    if len(reference) == 0 or len(other) == 0:
        return {"reference_masks": len(reference), "masks": len(other),
                "matched": 1.0 if len(reference) == len(other) else 0.0,
                "extra": 0.0 if len(other) == 0 else 1.0, "mean_best_iou": None}
    a = torch.from_numpy(reference.reshape(len(reference), -1)).float()
    b = torch.from_numpy(other.reshape(len(other), -1)).float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
    iou = inter / union.clamp_min(1)
    best_ref, best_other = iou.max(dim=1).values, iou.max(dim=0).values
    return {"reference_masks": len(reference), "masks": len(other),
            "matched": round(float((best_ref >= 0.9).float().mean()), 4),
            "extra": round(float((best_other < 0.9).float().mean()), 4),
            "mean_best_iou": round(float(best_ref.mean()), 4)}


def fixed_masks(image: np.ndarray, count: int) -> MaskProposals:
    proposals = SuperpixelGenerator().generate(image)
    keep = np.argsort(-proposals.areas, kind="stable")[:count]
    return proposals.subset(keep)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--long-side", type=int, default=1024)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--precisions", default="fp32,bf16,fp16",
                        help="comma list; the first is the reference")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.0)
    parser.add_argument("--stability-thresh", type=float, default=0.0)
    parser.add_argument("--naming-masks", type=int, default=50)
    parser.add_argument("--sam-checkpoint", type=Path, default=None)
    parser.add_argument("--clip-checkpoint", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="toy models at a 256 px input, 1 image, 4 points, fp32 vs bf16")
    args = parser.parse_args(argv)
    size_sam, size_clip, sam_input = "vit_b", "vit_b16", 1024
    if args.smoke:
        args.images, args.long_side, args.points_per_side = 1, 256, 4
        args.precisions, args.naming_masks = "fp32,bf16", 5
        size_sam = size_clip = "toy"
        sam_input = 256
    device = torch.device(resolve_device(args.device))
    precisions = args.precisions.split(",")
    images = synthetic_images(args.images, args.long_side)

    if args.sam_checkpoint is not None:
        from zsplg.masks.sam.checkpoint import load_sam_checkpoint

        sam = load_sam_checkpoint("vit_b", args.sam_checkpoint)
    else:
        sam = random_sam(size_sam, img_size=sam_input)
    if args.clip_checkpoint is not None:
        clip_backends = {p: build_clip_backend(args.clip_checkpoint, device=str(device),
                                               precision=p) for p in precisions}
    else:
        clip = random_clip(size_clip)
        clip_backends = {p: ClipGemBackend(clip, dense_mode="gem", device=str(device),
                                           precision=p) for p in precisions}

    settings = {"loosened": (args.pred_iou_thresh, args.stability_thresh),
                "sam_defaults": (0.88, 0.95)}
    result: dict = {"device": str(device), "images": len(images),
                    "image_sizes": [list(im.shape[:2]) for im in images],
                    "points_per_side": args.points_per_side, "precisions": precisions,
                    "weights": "given checkpoints" if args.sam_checkpoint else "random",
                    "masks": {}, "names": {}, "mask_seconds_per_image": {}}
    for name, (iou_thresh, stability_thresh) in settings.items():
        generators = {p: build_sam_generator("vit_b", model=sam, device=str(device),
                                             points_per_side=args.points_per_side,
                                             pred_iou_thresh=iou_thresh,
                                             stability_score_thresh=stability_thresh,
                                             long_side=sam_input, precision=p)
                      for p in precisions}
        masks: dict[str, list[np.ndarray]] = {p: [] for p in precisions}
        seconds: dict[str, float] = {p: 0.0 for p in precisions}
        for image in images:
            for precision, generator in generators.items():
                if device.type == "cuda":
                    generator.generate(image)  # warm-up (kernels, autotuning) not timed
                sync(device)
                started = time.perf_counter()
                masks[precision].append(generator.generate(image).masks)
                sync(device)
                seconds[precision] += time.perf_counter() - started
        reference = precisions[0]
        rows = {}
        for precision in precisions[1:]:
            per_image = [match_masks(r, o) for r, o in zip(masks[reference], masks[precision],
                                                          strict=True)]
            rows[precision] = {
                "matched": round(float(np.mean([m["matched"] for m in per_image])), 4),
                "extra": round(float(np.mean([m["extra"] for m in per_image])), 4),
                "masks_per_image": [m["masks"] for m in per_image],
                "reference_masks_per_image": [m["reference_masks"] for m in per_image],
                "mean_best_iou": [m["mean_best_iou"] for m in per_image]}
        result["masks"][name] = {"pred_iou_thresh": iou_thresh,
                                 "stability_score_thresh": stability_thresh, **rows}
        result["mask_seconds_per_image"][name] = {
            p: round(s / len(images), 4) for p, s in seconds.items()}

    text = {p: b.encode_text([class_prompts(n) for n in NAMES]) for p, b in clip_backends.items()}
    labels: dict[str, list[np.ndarray]] = {p: [] for p in precisions}
    for image in images:
        fixed = fixed_masks(image, args.naming_masks)
        for precision, backend in clip_backends.items():
            with torch.inference_mode():
                pooled = pool_masks(backend.encode_image(image), fixed.masks)
                probs = backend.class_probabilities(pooled, text[precision],
                                                    backend.default_threshold,
                                                    backend.default_temperature)
            labels[precision].append(probs.argmax(dim=1).numpy())
    reference = precisions[0]
    for precision in precisions[1:]:
        same = np.concatenate([a == b for a, b in zip(labels[reference], labels[precision],
                                                      strict=True)])
        result["names"][precision] = {"label_agreement": round(float(same.mean()), 4),
                                      "masks_named": int(same.size)}
    print(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
