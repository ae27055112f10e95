"""Memory over a long `zsplg label` run: does resident memory grow with the image count?

Runs `zsplg label` as a child process and samples its resident set size (RSS)
and high-water mark from /proc (Linux) every --interval seconds, together with
how many label PNGs exist. Prints one JSON object: RSS and peak after
checkpoints of 1, 10, 50, 100, ... images, the mean RSS over each tenth of the
images, and the RSS range after the first 50 (allocator warm-up). A leak
shows as RSS rising with the count; a flat RSS with a slowly rising peak means
larger transient allocations (bigger images), not kept memory.

    python benchmarks/label_memory.py --from ../shared/data/voc2012-mini/train.txt \\
        ../shared/data/voc2012-mini/val.txt ../shared/data/camvid/train.txt --limit 500 \\
        --classes ../shared/data/voc2012-mini/classes.txt -- --masks superpixel --vl conse

`--from` takes the image column of pair-lists (in order, first --limit);
`--list` takes an image list as it is.

`--passes N` labels the same images N times in this process instead (through
the Python API, `Labeller.label_array`), printing this process's RSS per pass:
with no leak, pass 2 stays at pass 1's level, whatever the image sizes.

Arguments after `--` go to `zsplg label` unchanged.

`--models random` runs `zsplg label`'s own loop (zsplg.labeling.run.run_label: images
read from files, label and confidence PNGs written as a real run writes them) in this
process, with randomly initialised SAM (`--sam vit_b|toy`) and CLIP ViT-B/16 + GEM
(`--clip vit_b16|toy`) from benchmarks/random_models.py, on `--device cpu|cuda|auto`.
It needs no ../shared data and no weights, so the GPU machine runs it too. Images:
`--synthetic N` natural photos at varied sizes (benchmarks/synthetic_images.py),
written as JPEGs by `--image-workers` child processes before the run, so the
measured process never holds them; or `--list`/`--from`. After every image it reads
this process's VmRSS and VmHWM from /proc/self/status (on CUDA also
torch.cuda.memory_allocated, the peak since the previous checkpoint and
max_memory_allocated) and reports them after 1, 10, 50, 100, 200, 500, ... images
and the last, with images per second (CUDA synchronised), the mean RSS of each
tenth and the RSS change and least-squares slope from image 50 on (`--trace FILE`
keeps every image's sample).

Random weights make SAM's filters useless, so this mode changes three things, all
recorded in the JSON's settings: (1) every mask scores low, so the reference
thresholds (predicted IoU 0.88, stability 0.95) would drop nearly all and painting
and PNG writing would hardly run: both default to 0.0 here; (2) the mask upscaling's
sub-pixel kernels are tied (`--no-smooth-masks` undoes it; see smooth_mask_upscaling)
so masks have contours instead of pixel noise, whose cost a trained SAM never pays;
(3) random masks all span the image, so box NMS at SAM's 0.7 keeps about one per
image (`--box-nms-thresh 1.0` keeps every candidate, an upper bound on painting).

Output: at each checkpoint a one-line JSON summary so far (`"partial": true`) and
at the end the full result, the last line of stdout: a run killed at a time limit
still ends with its last checkpoint.

    python benchmarks/label_memory.py --models random --sam toy --points-per-side 8 \
        --synthetic 500 --device cpu --threads 1
    python benchmarks/label_memory.py --models random --sam vit_b --clip vit_b16 \
        --points-per-side 32 --synthetic 200 --long-side 1024 --device cuda
    python benchmarks/label_memory.py --models random --smoke   # toy models, 6 images
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from zsplg.masks.base import MaskProposals
from zsplg.runtime.progress import Reporter, Task

# the random-model helpers (random_models, synthetic_images) live beside this script
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHECKPOINTS = (1, 10, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000)
WARM_UP = 50  # images after which RSS should stop rising (allocator and caches warmed up)
# the class list of a random-model run without --classes (VOC's, background first)
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
               "potted plant", "sheep", "sofa", "train", "tv monitor")
THRESHOLD_NOTE = ("random weights give every SAM mask a low predicted IoU and stability, so "
                  "the reference thresholds (0.88, 0.95) would drop nearly every mask and "
                  "painting and PNG writing would hardly run; this mode defaults both to 0.0")


def read_status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB, or None once the process is gone."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def own_rss_mib() -> int:
    status = read_status(os.getpid())
    return round(status[0] / 1024) if status else -1


def read_images(image_list: Path | None, pair_lists: list[Path]) -> list[Path]:
    """An image list as it is, or the image column of pair-lists (relative to each list)."""
    if image_list is not None:
        return [Path(line.split()[0]) for line in image_list.read_text().splitlines()
                if line.strip()]
    return [(pairs.parent / line.split()[0]).resolve() for pairs in pair_lists
            for line in pairs.read_text().splitlines() if line.strip()]


def repeated_passes(images: list[Path], classes: Path, passes: int, extra: list[str]) -> dict:
    """Label the same images `passes` times in this process; RSS after each tenth."""
    import torch

    from zsplg.data.classes import load_class_spec
    from zsplg.data.images import read_image
    from zsplg.labeling.run import Labeller

    options = dict(zip(extra[::2], extra[1::2], strict=False))
    torch.set_num_threads(2)
    labeller = Labeller.from_names(load_class_spec(classes), options.get("--masks", "auto"),
                                   options.get("--vl", "auto"), device="cpu")
    arrays = [read_image(p, max_side=1024) for p in images]
    started, out = time.perf_counter(), []
    for number in range(passes):
        marks = {}
        for index, array in enumerate(arrays):
            labeller.label_array(array)
            if (index + 1) % max(len(arrays) // 10, 1) == 0 or index + 1 == len(arrays):
                marks[str(index + 1)] = own_rss_mib()
        out.append({"pass": number + 1, "rss_mib_after_images": marks})
    return {"images": len(arrays), "passes": out,
            "seconds": round(time.perf_counter() - started)}


# --------------------------------------------------------------------------- random models


IMAGE_BLOCK = 24  # synthetic photos made per call: loading skimage's photos is the slow part


def synthetic_stream(count: int, long_side: int, seed: int) -> Iterator[np.ndarray]:
    """`count` synthetic photos, made IMAGE_BLOCK at a time: a 500-image run must not hold
    500 decoded images (each block cycles through the photos, with its own seeded crops)."""
    from synthetic_images import synthetic_images

    for start in range(0, count, IMAGE_BLOCK):
        yield from synthetic_images(min(IMAGE_BLOCK, count - start), long_side, seed + start)


def _write_block(folder: Path, start: int, count: int, long_side: int, seed: int) -> None:
    """Photos start .. start + count - 1 of synthetic_stream, as JPEGs (a worker's share)."""
    from PIL import Image
    from synthetic_images import synthetic_images

    for offset, image in enumerate(synthetic_images(count, long_side, seed + start)):
        Image.fromarray(image).save(folder / f"synthetic_{start + offset:05d}.jpg", quality=92)


def write_synthetic(folder: Path, count: int, long_side: int, seed: int,
                    workers: int = 0) -> list[Path]:
    """Write the synthetic photos as JPEGs (what a real run reads); returns their paths.

    workers > 0: in that many child processes, so the measured process never holds the
    decoded photos and a 16-core GPU machine writes 200 in seconds, not a minute of its
    time limit; 0: in this process."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = [(folder, start, min(IMAGE_BLOCK, count - start), long_side, seed)
              for start in range(0, count, IMAGE_BLOCK)]
    if workers > 0 and blocks:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch
        with ProcessPoolExecutor(min(workers, len(blocks)), mp_context=context) as pool:
            for done in [pool.submit(_write_block, *block) for block in blocks]:
                done.result()
    else:
        for block in blocks:
            _write_block(*block)
    return [folder / f"synthetic_{index:05d}.jpg" for index in range(count)]


class CountingMasks:
    """A mask generator that counts the masks it hands on, so the JSON shows that masks
    survived the filters and were painted; everything else goes to the wrapped one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.images = self.masks = 0
        self.fewest: int | None = None
        self.most = 0

    def generate(self, image: np.ndarray) -> MaskProposals:
        proposals = self.inner.generate(image)
        count = len(proposals)
        self.images += 1
        self.masks += count
        self.fewest = count if self.fewest is None else min(self.fewest, count)
        self.most = max(self.most, count)
        return proposals

    def summary(self) -> dict[str, Any]:
        mean = round(self.masks / self.images, 1) if self.images else None
        return {"mean": mean, "min": self.fewest, "max": self.most}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def cuda_sync(device: str) -> None:
    """Timestamps on CUDA mean nothing until the queued kernels have run."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


class Sample(NamedTuple):
    """This process after one image: what the trace keeps per image."""

    seconds: float  # since the labelling loop started
    rss_kib: int  # VmRSS
    hwm_kib: int  # VmHWM, the peak RSS so far
    cuda_allocated: int  # bytes held by live CUDA tensors (0 off CUDA)
    malloc_in_use: int  # bytes malloc has handed out and not had back (-1 if unknown)
    malloc_free_held: int  # freed bytes malloc keeps instead of returning them (-1)
    python_blocks: int  # sys.getallocatedblocks(): live Python object memory blocks


class MemoryTrace(Reporter):
    """The reporter `run_label` is given: its task's advance() runs after each image's
    PNGs are written, so the samples are exactly the per-image states of a real run.

    RSS alone cannot tell a leak from the allocator keeping freed memory, so each
    sample also reads glibc's mallinfo2 (bytes in use, freed bytes held) and the number
    of live Python blocks, which leave the allocator's state untouched, unlike
    --malloc-trim."""

    def __init__(self, device: str, trace_file: Path | None = None,
                 malloc_trim: bool = False) -> None:
        self.device = device
        self.trace_file = trace_file
        self.trim = _malloc_trim() if malloc_trim else None
        self.mallinfo = _mallinfo2()
        self.cuda = device.startswith("cuda")
        self.started = time.perf_counter()
        self.samples: list[Sample] = []
        self.at: dict[str, dict[str, Any]] = {}
        self.window_start = (0, 0.0)  # (images, seconds) at the previous checkpoint
        self.cuda_peak = 0

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "img") -> Iterator[Task]:
        trace = self

        class Sampled(Task):
            def advance(self, steps: int = 1) -> None:
                trace.sample(total)

        cuda_sync(self.device)
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        self.started = time.perf_counter()
        yield Sampled()

    def sample(self, total: int | None) -> None:
        cuda_sync(self.device)
        if self.trim is not None:
            self.trim(0)
        seconds = time.perf_counter() - self.started
        rss, hwm = read_status(os.getpid()) or (-1, -1)
        allocated = 0
        if self.cuda:
            import torch

            allocated = torch.cuda.memory_allocated(self.device)
        in_use, free_held = self.mallinfo() if self.mallinfo is not None else (-1, -1)
        sample = Sample(seconds, rss, hwm, allocated, in_use, free_held,
                        sys.getallocatedblocks())
        self.samples.append(sample)
        done = len(self.samples)
        if self.trace_file is not None:  # per image, as it goes: a killed run keeps its trace
            with self.trace_file.open("a") as trace:
                trace.write(json.dumps({"image": done, **sample._asdict()}) + "\n")
        if done in CHECKPOINTS or done == total:
            self.checkpoint(done, sample)
            # a partial summary on stdout: a run killed at a time limit (gpu_suite.sh's
            # parts) still leaves its last checkpoint as the last JSON line
            print(json.dumps({"partial": True, **self.summary()}), flush=True)

    def checkpoint(self, done: int, sample: Sample) -> None:
        before, then = self.window_start
        seconds = sample.seconds
        record: dict[str, Any] = {
            "rss_mib": _mib(sample.rss_kib * 1024), "hwm_mib": _mib(sample.hwm_kib * 1024),
            "malloc_in_use_mib": _mib(sample.malloc_in_use),
            "malloc_free_held_mib": _mib(sample.malloc_free_held),
            "python_blocks": sample.python_blocks,
            "seconds": round(seconds, 2),
            "images_per_second_since_previous": round((done - before) / (seconds - then), 4)
            if seconds > then else None}
        if self.cuda:
            import torch

            window_peak = torch.cuda.max_memory_allocated(self.device)
            self.cuda_peak = max(self.cuda_peak, window_peak)
            record.update({
                "cuda_allocated_mib": _mib(sample.cuda_allocated),
                "cuda_peak_since_previous_mib": _mib(window_peak),
                "cuda_max_allocated_mib": _mib(self.cuda_peak),
                "cuda_reserved_mib": _mib(torch.cuda.memory_reserved(self.device))})
            torch.cuda.reset_peak_memory_stats(self.device)
        self.at[str(done)] = record
        self.window_start = (done, seconds)

    def summary(self) -> dict[str, Any]:
        """Checkpoints, RSS per tenth, and the trends after WARM_UP images."""
        total = len(self.samples)
        rss = [s.rss_kib / 1024 for s in self.samples]
        tenths = {}
        for k in range(10):
            low, high = total * k // 10, total * (k + 1) // 10
            if high > low:
                tenths[f"{low + 1}-{high}"] = round(sum(rss[low:high]) / (high - low))
        out: dict[str, Any] = {"images": total, "at_images": self.at,
                               "mean_rss_mib_by_tenth": tenths}
        if total:
            seconds = self.samples[-1].seconds
            out["seconds"] = round(seconds, 1)
            out["seconds_per_image"] = round(seconds / total, 3)
            if total > 10:  # the first images pay for lazy initialisation, not throughput
                steady = seconds - self.samples[9].seconds
                out["images_per_second_after_10"] = round((total - 10) / steady, 4)
            out["peak_hwm_mib"] = round(self.samples[-1].hwm_kib / 1024)
        if total > WARM_UP:
            warm = self.samples[WARM_UP - 1:]
            out["rss_mib_from_50"] = _trend([s.rss_kib / 1024 for s in warm])
            if warm[0].malloc_in_use >= 0:
                out["malloc_in_use_mib_from_50"] = _trend([s.malloc_in_use / 2**20
                                                           for s in warm])
            out["python_blocks_from_50"] = _trend([float(s.python_blocks) for s in warm])
        if self.cuda and total:
            allocated = [s.cuda_allocated / 2**20 for s in self.samples]
            out["cuda_allocated_mib_from_first"] = {
                "min": round(min(allocated)), "max": round(max(allocated)),
                "at_last": round(allocated[-1])}
            out["cuda_max_allocated_mib"] = _mib(self.cuda_peak)
        return out


def _mib(count: int) -> int | None:
    """Bytes -> MiB; None for an unknown (negative) count."""
    return round(count / 2**20) if count >= 0 else None


def _trend(values: list[float]) -> dict[str, float]:
    """First, last, range, change and least-squares slope per 100 images."""
    return {"at_50": round(values[0]), "at_last": round(values[-1]),
            "min": round(min(values)), "max": round(max(values)),
            "change": round(values[-1] - values[0]),
            "slope_per_100_images": round(100 * _slope(values), 2)}


def _malloc_trim() -> Any:
    """glibc's malloc_trim, to tell memory the allocator keeps from memory still in use:
    if trimming after every image flattens a rising RSS, nothing leaks."""
    import ctypes

    return ctypes.CDLL("libc.so.6").malloc_trim


def _mallinfo2() -> Callable[[], tuple[int, int]] | None:
    """A reader of glibc's mallinfo2 over all arenas: (bytes in use, including mmapped
    chunks; freed bytes held). None off glibc or before 2.33."""
    import ctypes

    class Info(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = Info

    def read() -> tuple[int, int]:
        info = function()
        return info.uordblks + info.hblkhd, info.fordblks

    return read


def _slope(values: list[float]) -> float:
    """Least-squares slope per step: a leak shows as a steady positive slope."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    numerator = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return numerator / sum((i - mean_x) ** 2 for i in range(n))


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load: the machine is shared, so seconds need this beside them."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def smooth_mask_upscaling(sam: Any) -> Any:
    """Give each of the mask decoder's 2 x 2 transposed convolutions one kernel for all four
    sub-pixels, so the 256 x 256 mask logits are the 64 x 64 map repeated (in place).

    At random weights each sub-pixel has its own random kernel, so the logits alternate in
    sign from pixel to pixel: on a toy SAM at 8 points, 74 % of the low-res cells
    straddled the threshold (8 % once tied), and the low-res filter's box statistics,
    which evaluate those cells, took 54 s an image instead of 17 s, with transients of
    hundreds of MiB that a trained SAM, whose masks have thin contours, never makes. The
    same layers and products run; only weight values change."""
    import torch

    with torch.no_grad():
        for layer in sam.mask_decoder.output_upscaling:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.copy_(layer.weight[:, :, :1, :1].expand_as(layer.weight))
    return sam


def build_random_labeller(args: argparse.Namespace, spec: Any, device: str) -> Any:
    """Labeller over random SAM and CLIP + GEM, built as the CLI's SAM + CLIP path builds
    its backends, with the given thresholds."""
    from random_models import random_clip, random_sam

    from zsplg.labeling.labeller import Labeller
    from zsplg.masks.sam import build_sam_generator
    from zsplg.vl.clip_gem import ClipGemBackend

    sam = random_sam(args.sam)
    if args.smooth_masks:
        smooth_mask_upscaling(sam)
    generator = build_sam_generator(
        "vit_b", model=sam, device=device,
        points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh)
    backend = ClipGemBackend(random_clip(args.clip), dense_mode="gem", device=device)
    return Labeller(spec, CountingMasks(generator), backend, max_side=args.max_side)


def random_models_run(args: argparse.Namespace, images: list[Path] | None) -> dict[str, Any]:
    """One `run_label` over the images with random models, traced per image."""
    import torch

    from zsplg.data.classes import load_class_spec
    from zsplg.labeling.run import run_label
    from zsplg.labeling.settings import LabelConfig
    from zsplg.runtime.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="zsplg-memory-"))
    try:
        classes = args.classes
        if classes is None:
            classes = work / "classes.txt"
            classes.write_text("".join(f"{name}\n" for name in VOC_CLASSES))
        if images is None:
            started = time.perf_counter()
            images = write_synthetic(work / "images", args.synthetic, args.long_side, args.seed,
                                     args.image_workers)
            made = round(time.perf_counter() - started, 1)
            source = {"synthetic": args.synthetic, "long_side": args.long_side,
                      "seed": args.seed, "image_workers": args.image_workers,
                      "seconds_to_write": made}
        else:
            source = {"images": len(images), "first": str(images[0]) if images else None}
        image_list = work / "images.txt"
        image_list.write_text("".join(f"{p}\n" for p in images))
        out = args.out or work / "run"
        config = LabelConfig(classes=str(classes), out=str(out), pair_list=str(image_list),
                             masks="sam-vit-b", vl="clip-gem", device=device,
                             points_per_side=args.points_per_side, max_side=args.max_side,
                             overwrite=True)
        load_before = load_average()
        built = time.perf_counter()
        labeller = build_random_labeller(args, load_class_spec(classes), device)
        build_seconds = round(time.perf_counter() - built, 1)
        trace = MemoryTrace(device, args.trace, args.malloc_trim)
        info = run_label(config, trace, labeller=labeller)
        labels = sorted((Path(out) / "labels").rglob("*.png"))
        result: dict[str, Any] = {
            "mode": "random-models",
            "settings": {
                "sam": args.sam, "clip": args.clip, "dense_mode": "gem",
                "points_per_side": args.points_per_side,
                "pred_iou_thresh": args.pred_iou_thresh,
                "stability_score_thresh": args.stability_score_thresh,
                "threshold_note": THRESHOLD_NOTE, "box_nms_thresh": args.box_nms_thresh,
                "smooth_masks": args.smooth_masks, "malloc_trim": args.malloc_trim,
                "max_side": args.max_side,
                "device": device, "torch_threads": torch.get_num_threads(),
                "sam_precision": labeller.mask_generator.precision,
                "toy_note": "toy SAM shrinks only the ViT encoder (2 blocks, width 96); "
                            "prompt encoder, mask decoder, 1024 input and 64 x 64 "
                            "embeddings are full size" if args.sam == "toy" else None},
            "source": source,
            "build_seconds": build_seconds,
            **trace.summary(),
            "masks_per_image": labeller.mask_generator.summary(),
            "label_pngs": len(labels),
            "failed": info["counts"]["failed"],
            "load_average": {"before": load_before, "after": load_average()},
            "versions": {"torch": torch.__version__,
                         "cuda_device": torch.cuda.get_device_name(device)
                         if device.startswith("cuda") else None},
        }
        return result
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", type=Path, help="images to label")
    parser.add_argument("--from", dest="pair_lists", nargs="+", type=Path, default=[],
                        help="pair-lists whose images to label, in order")
    parser.add_argument("--limit", type=int, default=0, help="label the first N images only")
    parser.add_argument("--classes", type=Path,
                        help="class spec (required except with --models random: VOC's)")
    parser.add_argument("--out", type=Path, help="label folder (default: a temp folder)")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--passes", type=int, default=0,
                        help="label the images this many times in-process instead")
    random = parser.add_argument_group("--models random (in-process, random weights)")
    random.add_argument("--models", choices=("cli", "random"), default="cli",
                        help="cli: a `zsplg label` child process; random: random SAM and "
                             "CLIP + GEM in this process")
    random.add_argument("--sam", choices=("vit_b", "toy"), default="vit_b")
    random.add_argument("--clip", choices=("vit_b16", "toy"), default="vit_b16")
    random.add_argument("--points-per-side", type=int, default=8)
    random.add_argument("--pred-iou-thresh", type=float, default=0.0)
    random.add_argument("--stability-score-thresh", type=float, default=0.0)
    random.add_argument("--box-nms-thresh", type=float, default=0.7,
                        help="SAM's box NMS (0.7, its default; random masks all span the "
                             "image, so NMS keeps about one: 1.0 keeps every candidate)")
    random.add_argument("--smooth-masks", action=argparse.BooleanOptionalAction, default=True,
                        help="tie the mask upscaling's sub-pixel kernels (see "
                             "smooth_mask_upscaling)")
    random.add_argument("--device", default="auto", help="cpu, cuda or auto")
    random.add_argument("--synthetic", type=int, default=0,
                        help="label N synthetic photos (instead of --list/--from)")
    random.add_argument("--long-side", type=int, default=1024,
                        help="the synthetic photos' long side")
    random.add_argument("--max-side", type=int, default=1024,
                        help="images are read at most this large, as `zsplg label --max-side`")
    random.add_argument("--seed", type=int, default=0)
    random.add_argument("--image-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes writing the synthetic photos before the run "
                             "(0: this process)")
    random.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default)")
    random.add_argument("--keep", action="store_true", help="keep the temp folder")
    random.add_argument("--trace", type=Path,
                        help="append one JSON line per image (RSS, HWM, seconds) to this file")
    random.add_argument("--malloc-trim", action="store_true",
                        help="glibc malloc_trim(0) after every image (allocator or leak?)")
    random.add_argument("--smoke", action="store_true",
                        help="toy SAM and CLIP, 4 points, 6 synthetic images at 256 px")
    args = parser.parse_args(own)
    if args.smoke:
        args.models, args.sam, args.clip, args.points_per_side = "random", "toy", "toy", 4
        args.synthetic, args.long_side = args.synthetic or 6, 256
    if args.models == "random" and args.synthetic:
        if args.list or args.pair_lists:
            parser.error("give --synthetic or --list/--from, not both")
        images = None
    else:
        if bool(args.list) == bool(args.pair_lists):
            parser.error("give --list or --from" + (" (or --synthetic N)"
                                                    if args.models == "random" else ""))
        images = read_images(args.list, args.pair_lists)
        if args.limit:
            images = images[: args.limit]
    if args.models == "random":
        print(json.dumps(random_models_run(args, images)))
        return 0
    if args.classes is None:
        parser.error("--classes is required (except with --models random)")
    assert images is not None
    if args.passes:
        print(json.dumps(repeated_passes(images, args.classes, args.passes, extra), indent=2))
        return 0
    work = Path(tempfile.mkdtemp(prefix="zsplg-memory-"))
    out = args.out or work / "run"
    image_list = work / "images.txt"
    image_list.write_text("".join(f"{p}\n" for p in images))
    command = [sys.executable, "-m", "zsplg.cli", "label", "--list", str(image_list),
               "--classes", str(args.classes), "--out", str(out), *extra]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    samples: list[tuple[int, int, int]] = []  # (labels written, rss KiB, peak KiB)
    while child.poll() is None:
        status = read_status(child.pid)
        if status is not None:
            labels = out / "labels"
            done = sum(1 for _ in labels.rglob("*.png")) if labels.is_dir() else 0
            samples.append((done, *status))
        time.sleep(args.interval)
    stderr = child.stderr.read() if child.stderr else ""
    if child.returncode != 0:
        print(stderr[-2000:], file=sys.stderr)
        return child.returncode
    total = max((s[0] for s in samples), default=0)
    checkpoints = [n for n in CHECKPOINTS if n <= total] + [total]
    at = {}
    for n in sorted(set(checkpoints)):
        first = next((s for s in samples if s[0] >= n), None)
        if first is not None:
            at[str(n)] = {"rss_mib": round(first[1] / 1024), "peak_mib": round(first[2] / 1024)}
    warm = [s[1] for s in samples if s[0] >= min(50, total)]
    # mean RSS over each tenth of the images: single samples swing with image size
    tenths = {}
    for k in range(10):
        low, high = total * k // 10, total * (k + 1) // 10
        window = [s[1] for s in samples if low < s[0] <= high]
        if window:
            tenths[f"{low + 1}-{high}"] = round(sum(window) / len(window) / 1024)
    print(json.dumps({
        "command": command[2:], "images": total, "seconds": round(time.perf_counter() - started),
        "samples": len(samples), "at_images": at, "mean_rss_mib_by_tenth": tenths,
        "rss_mib_after_50": {"min": round(min(warm) / 1024), "max": round(max(warm) / 1024)}
        if warm else None,
        "peak_mib": round(max(s[2] for s in samples) / 1024) if samples else None,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
