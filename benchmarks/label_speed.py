"""Labelling speed: our SAM + CLIP/GEM pipeline against the peers' recipe.

Both pipelines run in one process on the same images with full-size randomly
initialised SAM ViT-B and CLIP ViT-B/16 (compute does not depend on weight
values; no real weights exist on this machine):

- mask stage: everything mode at the same points per side and thresholds.
  Reference: segment-anything's SamAutomaticMaskGenerator. Ours:
  zsplg.masks.sam (image encoded once, all prompts decoded in one batch,
  filtered on low-resolution logits before any full-resolution work).
- naming stage, on the same fixed masks for both (random weights make the
  generators' filters drop nearly every mask, so the superpixel generator's
  largest `--naming-masks` masks are used). Reference: one CLIP forward per
  mask crop, as autodistill's SAM-CLIP does. Ours: one GEM forward at 448 px,
  every mask pooled in one matrix product.

Extra row `sam2`: the SAM 2.1 fast tier's mask stage (zsplg.masks.sam2, a
full-size random Hiera-Tiny by default, `--sam2 small|none`) at the same
settings, with `sam2_mask_speedup` = our SAM ViT-B mask seconds / SAM 2.1's
(above 1: the tier is faster). `--sam2-reference` also times sam2's own
SAM2AutomaticMaskGenerator on the same model (slow on a CPU).

Prints JSON; the last line is the JSON object too (`--quick`: one image,
16 points per side). `ratio` = reference total / our total (above 1: ours is
faster).

    python benchmarks/label_speed.py --images 2
    python benchmarks/label_speed.py --quick
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F  # noqa: N812

from zsplg.data.images import read_image
from zsplg.data.sources import read_pair_list
from zsplg.labeling.annotate import pool_masks
from zsplg.masks.base import MaskProposals
from zsplg.masks.sam import build_sam_generator
from zsplg.masks.superpixel import SuperpixelGenerator
from zsplg.vl.clip_gem import ClipGemBackend
from zsplg.vl.prompts import class_prompts

VOC_LIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012-mini" / "val.txt"
CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def fixed_masks(image: np.ndarray, count: int) -> MaskProposals:
    proposals = SuperpixelGenerator().generate(image)
    keep = np.argsort(-proposals.areas, kind="stable")[:count]
    return proposals.subset(keep)


@torch.inference_mode()
def reference_naming(clip_model, image: np.ndarray, proposals: MaskProposals,
                     text: torch.Tensor) -> np.ndarray:
    """autodistill SAM-CLIP style: crop each mask's box, blank the outside, one CLIP call each."""
    labels = []
    for mask in proposals.masks:
        rows, cols = np.nonzero(mask)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        crop = image[top:bottom, left:right] * mask[top:bottom, left:right, None]
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div(255)
        x = F.interpolate(x[None], size=(224, 224), mode="bicubic", align_corners=False)
        x = (x - CLIP_MEAN) / CLIP_STD
        embedding = F.normalize(clip_model.encode_image(x), dim=-1)
        labels.append(int((embedding @ text.T).argmax()))
    return np.asarray(labels)


@torch.inference_mode()
def our_naming(backend: ClipGemBackend, image: np.ndarray, proposals: MaskProposals,
               text: torch.Tensor) -> np.ndarray:
    features = backend.encode_image(image)
    pooled = pool_masks(features, proposals.masks)
    probs = backend.class_probabilities(pooled, text, backend.default_threshold,
                                        backend.default_temperature)
    return probs.argmax(dim=1).numpy()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", type=Path, default=VOC_LIST)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--naming-masks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one image, 16 points per side")
    parser.add_argument("--sam2", choices=("tiny", "small", "none"), default="tiny",
                        help="SAM 2.1 size for the fast-tier row (none: skip it)")
    parser.add_argument("--sam2-reference", action="store_true",
                        help="also time sam2's SAM2AutomaticMaskGenerator")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.points_per_side = 1, 16
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.list.exists():
        print(json.dumps({"skipped": f"{args.list} not found"}))
        return 0
    samples = read_pair_list(args.list)[: args.images]
    images = [read_image(s.image) for s in samples]

    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    sam = sam_model_registry["vit_b"]().eval()
    settings = dict(points_per_side=args.points_per_side, pred_iou_thresh=0.88,
                    stability_score_thresh=0.95, box_nms_thresh=0.7)
    reference_sam = SamAutomaticMaskGenerator(sam, points_per_batch=64, **settings)
    ours_sam = build_sam_generator("vit_b", model=sam, device="cpu", **settings)

    sam2_row = None
    if args.sam2 != "none":
        from zsplg.masks.sam2 import build_sam2_generator, build_sam2_model

        sam2_model = build_sam2_model(args.sam2)
        ours_sam2 = build_sam2_generator(args.sam2, model=sam2_model, device="cpu", **settings)
        sam2_row = {"mask": [], "kept": [], "reference_mask": [], "reference_kept": []}
        if args.sam2_reference:
            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

            reference_sam2 = SAM2AutomaticMaskGenerator(sam2_model, points_per_batch=64,
                                                        **settings)

    clip_model = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
    backend = ClipGemBackend(clip_model, dense_mode="gem", device="cpu")
    names = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
             "cat", "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
             "potted plant", "sheep", "sofa", "train", "tv monitor"]
    text = backend.encode_text([class_prompts(n) for n in names[1:]])

    rows = {"reference": {"mask": [], "naming": [], "kept": []},
            "ours": {"mask": [], "naming": [], "kept": []}}
    agree = []
    for image in images:
        masks, seconds = timed(reference_sam.generate, image)
        rows["reference"]["mask"].append(seconds)
        rows["reference"]["kept"].append(len(masks))
        proposals, seconds = timed(ours_sam.generate, image)
        rows["ours"]["mask"].append(seconds)
        rows["ours"]["kept"].append(len(proposals))
        if sam2_row is not None:
            proposals, seconds = timed(ours_sam2.generate, image)
            sam2_row["mask"].append(seconds)
            sam2_row["kept"].append(len(proposals))
            if args.sam2_reference:
                records, seconds = timed(reference_sam2.generate, image)
                sam2_row["reference_mask"].append(seconds)
                sam2_row["reference_kept"].append(len(records))

        fixed = fixed_masks(image, args.naming_masks)
        ref_labels, seconds = timed(reference_naming, clip_model, image, fixed, text)
        rows["reference"]["naming"].append(seconds)
        our_labels, seconds = timed(our_naming, backend, image, fixed, text)
        rows["ours"]["naming"].append(seconds)
        agree.append(len(fixed))
        del ref_labels, our_labels  # random weights: the labels themselves mean nothing

    def summary(row: dict) -> dict:
        mask, naming = float(np.mean(row["mask"])), float(np.mean(row["naming"]))
        return {"mask_seconds_per_image": round(mask, 3),
                "naming_seconds_per_image": round(naming, 3),
                "total_seconds_per_image": round(mask + naming, 3),
                "masks_kept_per_image": row["kept"]}

    result = {
        "images": len(images),
        "image_sizes": [list(im.shape[:2]) for im in images],
        "threads": args.threads,
        "points_per_side": args.points_per_side,
        "naming_masks_per_image": agree,
        "device": "cpu",
        "reference": summary(rows["reference"]),
        "ours": summary(rows["ours"]),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    ref, ours = result["reference"], result["ours"]
    result["mask_ratio"] = round(ref["mask_seconds_per_image"] / ours["mask_seconds_per_image"], 2)
    result["naming_ratio"] = round(
        ref["naming_seconds_per_image"] / ours["naming_seconds_per_image"], 2)
    result["ratio"] = round(ref["total_seconds_per_image"] / ours["total_seconds_per_image"], 2)
    if sam2_row is not None:
        mask = float(np.mean(sam2_row["mask"]))
        result["sam2"] = {"model": f"SAM 2.1 Hiera-{args.sam2.capitalize()} (random weights)",
                          "mask_seconds_per_image": round(mask, 3),
                          "masks_kept_per_image": sam2_row["kept"]}
        result["sam2_mask_speedup"] = round(ours["mask_seconds_per_image"] / mask, 2)
        if args.sam2_reference:
            reference_mask = float(np.mean(sam2_row["reference_mask"]))
            result["sam2"]["reference_mask_seconds_per_image"] = round(reference_mask, 3)
            result["sam2"]["reference_masks_kept_per_image"] = sam2_row["reference_kept"]
            result["sam2"]["mask_ratio"] = round(reference_mask / mask, 2)
    print(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
