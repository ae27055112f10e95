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

`--busy N` measures twice in one invocation: first as the machine is, then with N
CPU-burning processes beside the run (a pure-Python loop each; they end with the
phase, at `--busy-limit` seconds, or when this process dies), because a labelling
run rarely has the machine to itself and a CPU pipeline of many small
multi-threaded ops can lose its lead there. The first phase's figures keep the
top-level keys; the busy phase's go under "busy", with "busy_ratio" and
"busy_mask_ratio" on top. Each phase records os.getloadavg() at its start and end:
`load` counts every runnable thread on the machine, other users' included, so
compare phases only at similar background load.

GPU / headless (`--device cuda`, or `auto` where one is usable): the models run there,
one untimed warm-up pass goes first, timed sections are bracketed by
torch.cuda.synchronize(), and each row adds its peak GPU memory
(torch.cuda.max_memory_allocated after a reset, MiB). `--precision` goes to
our generators and ClipGemBackend only (their image encoders); the reference runs as
segment-anything runs it (fp32). Where `--list` does not exist (a machine without
../shared), or with `--synthetic`, the images are synthetic_images.py's photos at
`--long-side`. `--smoke`: toy encoders (random_models.py: full-size SAM decoder, tiny
ViTs), one synthetic image (long side 512), 4 points per side, no sam2 row, 5 naming
masks: a check that the script runs (about 20 s of CPU after imports); its seconds
mean nothing.

Prints JSON; the last line is the JSON object alone (`--quick`: one image, 16 points
per side). `ratio` = reference total / our total (above 1: ours is faster);
`images_per_second` = 1 / total seconds per image.

    python benchmarks/label_speed.py --images 2
    python benchmarks/label_speed.py --quick
    python benchmarks/label_speed.py --images 1 --busy 2
    python benchmarks/label_speed.py --smoke
    python benchmarks/label_speed.py --device cuda --images 8 --long-side 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_models import random_clip, random_sam  # noqa: E402
from synthetic_images import synthetic_images  # noqa: E402

from zsplg.data.images import read_image  # noqa: E402
from zsplg.data.sources import read_pair_list  # noqa: E402
from zsplg.labeling.annotate import pool_masks  # noqa: E402
from zsplg.masks.base import MaskProposals  # noqa: E402
from zsplg.masks.sam import build_sam_generator  # noqa: E402
from zsplg.masks.superpixel import SuperpixelGenerator  # noqa: E402
from zsplg.runtime.device import resolve_device  # noqa: E402
from zsplg.vl.clip_gem import ClipGemBackend  # noqa: E402
from zsplg.vl.prompts import class_prompts  # noqa: E402

VOC_LIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012-mini" / "val.txt"
CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
         "cat", "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
         "potted plant", "sheep", "sofa", "train", "tv monitor"]

# one CPU burner: spins in pure Python (no memory traffic to speak of) until its
# deadline or until its parent (this script) is gone, whichever comes first
_BURNER = """
import os, sys, time
deadline, parent = time.monotonic() + float(sys.argv[1]), int(sys.argv[2])
while time.monotonic() < deadline and os.getppid() == parent:
    sum(range(100000))
"""


class Burners:
    """`count` CPU-bound processes for the duration of a `with` block.

    Each ends by itself after `seconds` or when its parent dies (it polls getppid every
    few milliseconds), so a killed benchmark leaves nothing spinning; leaving the block
    terminates them (only these processes, by their ids)."""

    def __init__(self, count: int, seconds: float) -> None:
        self.count, self.seconds = count, seconds
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> Burners:
        for _ in range(self.count):
            self.processes.append(subprocess.Popen(
                [sys.executable, "-S", "-c", _BURNER, str(self.seconds), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        time.sleep(1.0)  # let them start spinning before anything is timed
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


class Timer:
    """Wall seconds of a call and, on CUDA, its peak allocated GPU memory: the device is
    synchronised before and after (kernels run asynchronously) and the peak counter
    reset, so each figure is that call's alone."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float | None]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = fn(*args)
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        return result, seconds, peak


def fixed_masks(image: np.ndarray, count: int) -> MaskProposals:
    """The superpixel generator's `count` largest masks: the same for both namers."""
    proposals = SuperpixelGenerator().generate(image)
    keep = np.argsort(-proposals.areas, kind="stable")[:count]
    return proposals.subset(keep)


@torch.inference_mode()
def reference_naming(clip_model: torch.nn.Module, image: np.ndarray,
                     proposals: MaskProposals, text: torch.Tensor) -> np.ndarray:
    """autodistill SAM-CLIP style: crop each mask's box, blank the outside, one CLIP call each."""
    device = next(clip_model.parameters()).device
    mean, std, text = CLIP_MEAN.to(device), CLIP_STD.to(device), text.to(device)
    labels = []
    for mask in proposals.masks:
        rows, cols = np.nonzero(mask)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        crop = image[top:bottom, left:right] * mask[top:bottom, left:right, None]
        x = torch.from_numpy(np.ascontiguousarray(crop)).to(device).permute(2, 0, 1)
        x = F.interpolate(x.float().div(255)[None], size=(224, 224), mode="bicubic",
                          align_corners=False)
        x = (x - mean) / std
        embedding = F.normalize(clip_model.encode_image(x), dim=-1)
        labels.append(int((embedding @ text.T).argmax()))
    return np.asarray(labels)


@torch.inference_mode()
def our_naming(backend: ClipGemBackend, image: np.ndarray, proposals: MaskProposals,
               text: torch.Tensor) -> np.ndarray:
    """One GEM forward, every mask pooled at once (zsplg's Annotator path)."""
    features = backend.encode_image(image)
    pooled = pool_masks(features, proposals.masks)
    probs = backend.class_probabilities(pooled, text, backend.default_threshold,
                                        backend.default_temperature)
    return probs.argmax(dim=1).numpy()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", type=Path, default=VOC_LIST,
                        help="pair list of the images (absent: synthetic images)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--naming-masks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one image, 16 points per side")
    parser.add_argument("--sam2", choices=("tiny", "small", "none"), default="tiny",
                        help="SAM 2.1 size for the fast-tier row (none: skip it)")
    parser.add_argument("--sam2-reference", action="store_true",
                        help="also time sam2's SAM2AutomaticMaskGenerator")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="after the first phase, measure again beside N CPU burners")
    parser.add_argument("--busy-limit", type=float, default=7200.0, metavar="SECONDS",
                        help="the burners stop by themselves after this long")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                        help="where the models run (auto: cuda if usable)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                        help="our image encoders' precision (default: the library's, auto)")
    parser.add_argument("--synthetic", action="store_true",
                        help="synthetic photos instead of --list")
    parser.add_argument("--long-side", type=int, default=None,
                        help="synthetic images' long side (default 1024; 512 with --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="toy encoders, 1 synthetic image, 4 points, no sam2, 5 masks")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.points_per_side = 1, 16
    if args.smoke:
        args.images, args.points_per_side, args.naming_masks = 1, 4, 5
        args.sam2, args.synthetic = "none", True
        args.long_side = args.long_side or 512
    args.long_side = args.long_side or 1024
    if args.busy < 0:
        parser.error("--busy must be >= 0")
    return args


def load_images(args: argparse.Namespace) -> tuple[list[np.ndarray], str]:
    """The --list's first images, or synthetic ones where there is no list."""
    if args.synthetic or not args.list.exists():
        return (synthetic_images(args.images, long_side=args.long_side),
                f"synthetic_images(long_side={args.long_side})")
    samples = read_pair_list(args.list)[: args.images]
    return [read_image(s.image) for s in samples], str(args.list)


def summary(row: dict) -> dict:
    """Per-image means of one pipeline's stage timings (mask, naming, total)."""
    mask, naming = float(np.mean(row["mask"])), float(np.mean(row["naming"]))
    out = {"mask_seconds_per_image": round(mask, 3),
           "naming_seconds_per_image": round(naming, 3),
           "total_seconds_per_image": round(mask + naming, 3),
           "images_per_second": round(1.0 / (mask + naming), 4),
           "masks_kept_per_image": row["kept"]}
    if row["peak"]:
        out["peak_gpu_mib"] = round(max(row["peak"]), 1)
    return out


def run_phase(models: dict, images: list[np.ndarray], args: argparse.Namespace,
              timer: Timer) -> dict:
    """Every pipeline on every image, as the machine is now; the per-phase JSON."""
    load_start = os.getloadavg()
    rows = {name: {"mask": [], "naming": [], "kept": [], "peak": []}
            for name in ("reference", "ours")}
    sam2 = {"mask": [], "kept": [], "peak": [], "reference_mask": [], "reference_kept": []}
    naming_masks = []
    for image in images:
        masks, seconds, peak = timer(models["reference_sam"].generate, image)
        rows["reference"]["mask"].append(seconds)
        rows["reference"]["kept"].append(len(masks))
        rows["reference"]["peak"] += [peak] if peak is not None else []
        proposals, seconds, peak = timer(models["ours_sam"].generate, image)
        rows["ours"]["mask"].append(seconds)
        rows["ours"]["kept"].append(len(proposals))
        rows["ours"]["peak"] += [peak] if peak is not None else []
        if "ours_sam2" in models:
            proposals, seconds, peak = timer(models["ours_sam2"].generate, image)
            sam2["mask"].append(seconds)
            sam2["kept"].append(len(proposals))
            sam2["peak"] += [peak] if peak is not None else []
            if "reference_sam2" in models:
                records, seconds, _ = timer(models["reference_sam2"].generate, image)
                sam2["reference_mask"].append(seconds)
                sam2["reference_kept"].append(len(records))

        fixed = fixed_masks(image, args.naming_masks)
        # random weights: the labels themselves mean nothing, only the time does
        _, seconds, peak = timer(reference_naming, models["clip"], image, fixed, models["text"])
        rows["reference"]["naming"].append(seconds)
        rows["reference"]["peak"] += [peak] if peak is not None else []
        _, seconds, peak = timer(our_naming, models["backend"], image, fixed, models["text"])
        rows["ours"]["naming"].append(seconds)
        rows["ours"]["peak"] += [peak] if peak is not None else []
        naming_masks.append(len(fixed))

    result: dict[str, Any] = {"naming_masks_per_image": naming_masks,
                              "reference": summary(rows["reference"]),
                              "ours": summary(rows["ours"])}
    ref, ours = result["reference"], result["ours"]
    result["mask_ratio"] = round(ref["mask_seconds_per_image"] / ours["mask_seconds_per_image"], 2)
    result["naming_ratio"] = round(
        ref["naming_seconds_per_image"] / ours["naming_seconds_per_image"], 2)
    result["ratio"] = round(ref["total_seconds_per_image"] / ours["total_seconds_per_image"], 2)
    if "ours_sam2" in models:
        mask = float(np.mean(sam2["mask"]))
        result["sam2"] = {"model": f"SAM 2.1 Hiera-{args.sam2.capitalize()} (random weights)",
                          "mask_seconds_per_image": round(mask, 3),
                          "images_per_second": round(1.0 / mask, 4),
                          "masks_kept_per_image": sam2["kept"]}
        if sam2["peak"]:
            result["sam2"]["peak_gpu_mib"] = round(max(sam2["peak"]), 1)
        result["sam2_mask_speedup"] = round(ours["mask_seconds_per_image"] / mask, 2)
        if "reference_sam2" in models:
            reference_mask = float(np.mean(sam2["reference_mask"]))
            result["sam2"]["reference_mask_seconds_per_image"] = round(reference_mask, 3)
            result["sam2"]["reference_masks_kept_per_image"] = sam2["reference_kept"]
            result["sam2"]["mask_ratio"] = round(reference_mask / mask, 2)
    result["load"] = {"start": [round(x, 2) for x in load_start],
                      "end": [round(x, 2) for x in os.getloadavg()]}
    return result


def build_models(args: argparse.Namespace, device: torch.device) -> dict:
    """Both pipelines' models on `device`; the reference's SAM and CLIP are the very
    modules ours use (one copy each), so weights and sizes match by construction."""
    from segment_anything import SamAutomaticMaskGenerator

    precision = {} if args.precision is None else {"precision": args.precision}
    sam = random_sam("toy" if args.smoke else "vit_b").to(device)
    settings = dict(points_per_side=args.points_per_side, pred_iou_thresh=0.88,
                    stability_score_thresh=0.95, box_nms_thresh=0.7)
    models: dict[str, Any] = {
        "reference_sam": SamAutomaticMaskGenerator(sam, points_per_batch=64, **settings),
        "ours_sam": build_sam_generator("vit_b", model=sam, device=device, **settings,
                                        **precision),
    }
    if args.sam2 != "none":
        from zsplg.masks.sam2 import build_sam2_generator, build_sam2_model

        sam2_model = build_sam2_model(args.sam2).to(device)
        models["ours_sam2"] = build_sam2_generator(args.sam2, model=sam2_model, device=device,
                                                   **settings, **precision)
        if args.sam2_reference:
            from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

            models["reference_sam2"] = SAM2AutomaticMaskGenerator(
                sam2_model, points_per_batch=64, **settings)

    clip_model = random_clip("toy" if args.smoke else "vit_b16").to(device)
    backend = ClipGemBackend(clip_model, dense_mode="gem", device=str(device), **precision)
    models.update(clip=clip_model, backend=backend,
                  text=backend.encode_text([class_prompts(n) for n in NAMES[1:]]))
    return models


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    images, source = load_images(args)
    models = build_models(args, device)
    timer = Timer(device)

    result: dict[str, Any] = {
        "images": len(images),
        "image_source": source,
        "image_sizes": [list(im.shape[:2]) for im in images],
        "threads": args.threads,
        "points_per_side": args.points_per_side,
        "device": str(device),
        "models": "toy encoders (smoke)" if args.smoke else "SAM ViT-B, CLIP ViT-B/16",
        "precision": getattr(models["ours_sam"], "precision", "fp32"),
        "reference_precision": "fp32",
    }
    if device.type == "cuda":
        # one untimed pass first: CUDA context, cuBLAS/cuDNN handles and kernel selection
        # would otherwise land in the first image's seconds of whichever pipeline runs first
        result["gpu"] = torch.cuda.get_device_name(device)
        run_phase(models, images[:1], args, timer)
    result.update(run_phase(models, images, args, timer))
    if args.busy:
        with Burners(args.busy, args.busy_limit):
            busy = run_phase(models, images, args, timer)
        result["busy"] = {"processes": args.busy, **busy}
        result["busy_ratio"] = busy["ratio"]
        result["busy_mask_ratio"] = busy["mask_ratio"]
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    print(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
