"""Seconds per `unimatch` training step: zsplg's step against the reference step.

The reference is a plain-PyTorch transcription of the step in
LiheYoung/UniMatch's unimatch.py (teacher on the CutMix source, in-place
CutMix of images and targets, confidence masks, 0.25/0.25/0.5 weights,
(loss_x + loss_u) / 2), written here for the comparison. Both run on the same
DeepLabV3+ model, the same batch and crop, with forward, backward and the SGD
update, alternating so machine load affects both alike. Data loading is
excluded: it is the same code for both.

    python benchmarks/train_step.py [--steps 8] [--batch-size 4] [--crop 256] [--quick]
    python benchmarks/train_step.py --device cuda --amp both --batch-size 8 --crop 512
    python benchmarks/train_step.py --smoke          # seconds: CI checks the code runs

Prints one line of JSON. The headline compares the two steps in the same memory
layout: ``ratio_nchw`` (both NCHW) and ``ratio_channels_last`` (both channels_last),
ours / reference seconds per step (at most 1.0 = no slower). What the layout itself
buys is reported apart: ``layout_gain_ours`` and ``layout_gain_reference``
(channels_last / NCHW seconds, below 1.0 = channels_last is faster). zsplg's trainer
runs in channels_last; UniMatch's script runs in NCHW.

On CUDA, ``--amp`` adds mixed precision exactly as zsplg's trainer
(zsplg.train.loop.Trainer) uses it: bf16 autocast (fp16 with a GradScaler where
the GPU lacks bf16) around the forward passes, losses in fp32. The reference
step runs inside the same autocast (its losses are autocast's fp32 ops), so
both steps compare in the same precision. AMP pipelines carry the suffix
``_amp`` in ``s_per_step`` and in the ratio keys; ``amp_speedup`` (with
``--amp both``) is AMP / fp32 seconds per pipeline. Every step is bracketed by
``torch.cuda.synchronize()``; ``step_gpu_mib`` is each pipeline's peak memory
during its step above what was allocated before it (activations, gradients,
temporaries), ``peak_gpu_mib`` the process's peak with all models resident.
fp32 means torch's defaults (cuDNN convolutions may use TF32; see
``cudnn_allow_tf32``), as the trainer runs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from zsplg.runtime.device import DeviceError, resolve_device
from zsplg.train.methods import StepSettings, semi_supervised_step
from zsplg.train.model import build_model

LAYOUTS = ("nchw", "channels_last")
MIB = 2 ** 20


def reference_step(model: nn.Module, img_x: Tensor, mask_x: Tensor, img_u_w: Tensor,
                   img_u_s1: Tensor, img_u_s2: Tensor, ignore_mask: Tensor,
                   cutmix_box1: Tensor, cutmix_box2: Tensor, img_u_w_mix: Tensor,
                   img_u_s1_mix: Tensor, img_u_s2_mix: Tensor, ignore_mask_mix: Tensor,
                   conf_thresh: float = 0.95) -> Tensor:
    """UniMatch's step, as its training script writes it."""
    criterion_l = nn.CrossEntropyLoss(ignore_index=255)
    criterion_u = nn.CrossEntropyLoss(reduction="none")
    with torch.no_grad():
        model.eval()
        pred_u_w_mix = model(img_u_w_mix).detach()
        conf_u_w_mix = pred_u_w_mix.softmax(dim=1).max(dim=1)[0]
        mask_u_w_mix = pred_u_w_mix.argmax(dim=1)
    img_u_s1[cutmix_box1.unsqueeze(1).expand(img_u_s1.shape) == 1] = \
        img_u_s1_mix[cutmix_box1.unsqueeze(1).expand(img_u_s1.shape) == 1]
    img_u_s2[cutmix_box2.unsqueeze(1).expand(img_u_s2.shape) == 1] = \
        img_u_s2_mix[cutmix_box2.unsqueeze(1).expand(img_u_s2.shape) == 1]
    model.train()
    num_lb, num_ulb = img_x.shape[0], img_u_w.shape[0]
    preds, preds_fp = model(torch.cat((img_x, img_u_w)), True)
    pred_x, pred_u_w = preds.split([num_lb, num_ulb])
    pred_u_w_fp = preds_fp[num_lb:]
    pred_u_s1, pred_u_s2 = model(torch.cat((img_u_s1, img_u_s2))).chunk(2)
    pred_u_w = pred_u_w.detach()
    conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
    mask_u_w = pred_u_w.argmax(dim=1)
    mask_u_w_cutmixed1, conf_u_w_cutmixed1, ignore_mask_cutmixed1 = \
        mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
    mask_u_w_cutmixed2, conf_u_w_cutmixed2, ignore_mask_cutmixed2 = \
        mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
    mask_u_w_cutmixed1[cutmix_box1 == 1] = mask_u_w_mix[cutmix_box1 == 1]
    conf_u_w_cutmixed1[cutmix_box1 == 1] = conf_u_w_mix[cutmix_box1 == 1]
    ignore_mask_cutmixed1[cutmix_box1 == 1] = ignore_mask_mix[cutmix_box1 == 1]
    mask_u_w_cutmixed2[cutmix_box2 == 1] = mask_u_w_mix[cutmix_box2 == 1]
    conf_u_w_cutmixed2[cutmix_box2 == 1] = conf_u_w_mix[cutmix_box2 == 1]
    ignore_mask_cutmixed2[cutmix_box2 == 1] = ignore_mask_mix[cutmix_box2 == 1]
    loss_x = criterion_l(pred_x, mask_x)
    loss_u_s1 = criterion_u(pred_u_s1, mask_u_w_cutmixed1)
    loss_u_s1 = loss_u_s1 * ((conf_u_w_cutmixed1 >= conf_thresh) & (ignore_mask_cutmixed1 != 255))
    loss_u_s1 = loss_u_s1.sum() / (ignore_mask_cutmixed1 != 255).sum().item()
    loss_u_s2 = criterion_u(pred_u_s2, mask_u_w_cutmixed2)
    loss_u_s2 = loss_u_s2 * ((conf_u_w_cutmixed2 >= conf_thresh) & (ignore_mask_cutmixed2 != 255))
    loss_u_s2 = loss_u_s2.sum() / (ignore_mask_cutmixed2 != 255).sum().item()
    loss_u_w_fp = criterion_u(pred_u_w_fp, mask_u_w)
    loss_u_w_fp = loss_u_w_fp * ((conf_u_w >= conf_thresh) & (ignore_mask != 255))
    loss_u_w_fp = loss_u_w_fp.sum() / (ignore_mask != 255).sum().item()
    loss = (loss_x + loss_u_s1 * 0.25 + loss_u_s2 * 0.25 + loss_u_w_fp * 0.5) / 2.0
    return loss


def make_batch(batch: int, crop: int, classes: int, seed: int) -> dict[str, torch.Tensor]:
    """One fixed batch (CPU tensors), reused by every step so data loading is excluded."""
    g = torch.Generator().manual_seed(seed)

    def img() -> torch.Tensor:
        return torch.randn(batch, 3, crop, crop, generator=g)

    def box() -> torch.Tensor:
        b = torch.zeros(batch, crop, crop, dtype=torch.long)
        b[:, crop // 4: crop // 2, crop // 4: crop // 2] = 1
        return b

    ignore = torch.zeros(batch, crop, crop, dtype=torch.long)
    ignore[:, -crop // 8:, :] = 255
    return {"img_x": img(), "mask_x": torch.randint(0, classes, (batch, crop, crop), generator=g),
            "img_w": img(), "img_s1": img(), "img_s2": img(), "ignore_mask": ignore,
            "cutmix_box1": box(), "cutmix_box2": box(), "pseudo": torch.full_like(ignore, 255),
            "mix_w": img(), "mix_s1": img(), "mix_s2": img(), "mix_ignore": ignore.clone()}


def amp_dtype() -> torch.dtype:
    """The trainer's choice (Trainer._amp_dtype): bf16 where the GPU has it, else fp16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Pipeline:
    """One step code (ours or the reference) in one layout and precision, with its own
    copy of the weights, optimiser and (fp16 only) gradient scaler."""

    def __init__(self, name: str, step: Callable[..., Tensor], model: nn.Module,
                 batch: dict[str, Tensor], device: str, dtype: torch.dtype | None) -> None:
        self.name, self.step, self.model, self.batch = name, step, model, batch
        self.device, self.dtype = device, dtype
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        # As the trainer: a scaler only for fp16 (bf16 has fp32's range); disabled it is
        # a pass-through, so every pipeline runs the same code.
        self.scaler = torch.amp.GradScaler("cuda" if device.startswith("cuda") else "cpu",
                                           enabled=dtype == torch.float16)

    def autocast(self) -> AbstractContextManager:
        """The trainer's autocast (Trainer.autocast), or nothing in fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def __call__(self) -> None:
        """Forward, backward and SGD update, as one training step of the trainer."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.step(self.model, self.batch, self.autocast())
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def ours(net: nn.Module, batch: dict[str, Tensor], autocast: AbstractContextManager) -> Tensor:
    """zsplg's unimatch step; it applies ``autocast`` to the forward passes itself."""
    u = {"img_w": batch["img_w"], "img_s1": batch["img_s1"], "img_s2": batch["img_s2"],
         "ignore_mask": batch["ignore_mask"], "cutmix_box1": batch["cutmix_box1"],
         "cutmix_box2": batch["cutmix_box2"], "pseudo": batch["pseudo"]}
    mix = {"img_w": batch["mix_w"], "img_s1": batch["mix_s1"], "img_s2": batch["mix_s2"],
           "ignore_mask": batch["mix_ignore"], "pseudo": batch["pseudo"]}
    loss, _ = semi_supervised_step(net, StepSettings(method="unimatch"), batch["img_x"],
                                   batch["mask_x"], u, mix, autocast)
    return loss


def reference(net: nn.Module, batch: dict[str, Tensor],
              autocast: AbstractContextManager) -> Tensor:
    """UniMatch's step with the whole loss computation under ``autocast``, as a training
    script adds AMP; backward runs outside it, as torch recommends."""
    with autocast:
        return reference_step(net, batch["img_x"], batch["mask_x"], batch["img_w"],
                              batch["img_s1"].clone(), batch["img_s2"].clone(),
                              batch["ignore_mask"], batch["cutmix_box1"],
                              batch["cutmix_box2"], batch["mix_w"], batch["mix_s1"],
                              batch["mix_s2"], batch["mix_ignore"])


def build_pipelines(args: argparse.Namespace, device: str,
                    precisions: list[tuple[str, torch.dtype | None]]) -> list[Pipeline]:
    """Every (precision, layout, step code) with identical starting weights."""
    torch.manual_seed(0)
    model = build_model(args.backbone, args.classes, pretrained=False)
    batch = {k: v.to(device) for k, v in
             make_batch(args.batch_size, args.crop, args.classes, seed=0).items()}
    batches = {"nchw": batch,
               "channels_last": {k: v.contiguous(memory_format=torch.channels_last)
                                 if v.dim() == 4 else v for k, v in batch.items()}}
    pipelines = []
    for suffix, dtype in precisions:
        for layout in LAYOUTS:
            memory_format = (torch.channels_last if layout == "channels_last"
                             else torch.contiguous_format)
            for label, step in (("reference", reference), ("ours", ours)):
                net = copy.deepcopy(model).to(device, memory_format=memory_format)
                pipelines.append(Pipeline(f"{label}_{layout}{suffix}", step, net,
                                          batches[layout], device, dtype))
    return pipelines


def time_pipelines(pipelines: list[Pipeline], steps: int, warmup: int,
                   cuda: bool) -> tuple[dict[str, float], dict[str, float], float]:
    """Median seconds per step and peak step memory (MiB; CUDA only) per pipeline, and
    the process's peak memory (MiB) over the timed steps.

    On CUDA each step is bracketed by synchronize(), or the clock would stop when the
    kernels are queued rather than when they are done.
    """
    for _ in range(warmup):  # allocator, kernels (and cuDNN's choices on CUDA)
        for pipeline in pipelines:
            pipeline()
    times: dict[str, list[float]] = {p.name: [] for p in pipelines}
    memory: dict[str, float] = {}
    peak, before = 0.0, 0
    # Rotating order: whichever step runs right after another pays for its freed memory
    # (measured on CPU: up to 1.2x), so each pipeline takes every position equally often.
    for i in range(steps):
        shift = i % len(pipelines)
        for pipeline in pipelines[shift:] + pipelines[:shift]:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            start = time.perf_counter()
            pipeline()
            if cuda:
                torch.cuda.synchronize()
            times[pipeline.name].append(time.perf_counter() - start)
            if cuda:
                peak = max(peak, torch.cuda.max_memory_allocated() / MIB)
                used = (torch.cuda.max_memory_allocated() - before) / MIB
                memory[pipeline.name] = max(memory.get(pipeline.name, 0.0), used)
        print(f"timed round {i + 1}/{steps}", file=sys.stderr, flush=True)
    return {name: statistics.median(t) for name, t in times.items()}, memory, peak


def ratios(median: dict[str, float], suffix: str) -> dict[str, float]:
    """Same-layout ours / reference ratios and the layout gains, for one precision."""
    def m(name: str) -> float:
        return median[name + suffix]

    return {f"ratio_nchw{suffix}": round(m("ours_nchw") / m("reference_nchw"), 3),
            f"ratio_channels_last{suffix}": round(m("ours_channels_last")
                                                  / m("reference_channels_last"), 3),
            f"layout_gain_ours{suffix}": round(m("ours_channels_last") / m("ours_nchw"), 3),
            f"layout_gain_reference{suffix}": round(m("reference_channels_last")
                                                    / m("reference_nchw"), 3)}


def main() -> None:
    """Parse the options, time every pipeline, print one line of JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8,
                        help="timed steps per pipeline (a multiple of the pipeline count "
                             "rotates evenly: 4, or 8 with --amp both)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps per pipeline first (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--amp", default=None, choices=("off", "on", "both"),
                        help="mixed precision as the trainer runs it (CUDA only): off = fp32, "
                             "on = AMP, both = fp32 and AMP side by side (default: both on "
                             "CUDA, off on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 with --smoke)")
    parser.add_argument("--quick", action="store_true", help="4 steps, batch 2, crop 128")
    parser.add_argument("--smoke", action="store_true",
                        help="1 warm-up and 1 timed step, batch 1, crop 64, 1 thread: checks "
                             "the code runs in seconds; the times mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.crop = 4, 2, 128
    if args.smoke:
        args.steps, args.warmup, args.batch_size, args.crop = 1, 1, 1, 64
        # Tiny steps gain nothing from a second thread, and on a shared CI machine
        # spinning threads made the smoke about 4 times slower (measured at load 6).
        args.threads = args.threads or 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        parser.error(str(error))
    cuda = device.startswith("cuda")
    amp = args.amp or ("both" if cuda else "off")
    if amp != "off" and not cuda:
        parser.error("--amp on/both needs CUDA (autocast to bf16 is what the trainer does on "
                     "a GPU; on CPU it runs fp32)")
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    dtype = amp_dtype() if amp != "off" else None
    precisions: list[tuple[str, torch.dtype | None]] = []
    if amp in ("off", "both"):
        precisions.append(("", None))
    if amp in ("on", "both"):
        precisions.append(("_amp", dtype))

    pipelines = build_pipelines(args, device, precisions)
    median, memory, peak = time_pipelines(pipelines, args.steps, warmup, cuda)
    result: dict[str, object] = {
        "backbone": args.backbone, "device": device, "amp": amp,
        "amp_dtype": str(dtype).removeprefix("torch.") if dtype else None,
        "batch_size": args.batch_size, "crop": args.crop, "steps": args.steps,
        "warmup": warmup, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "s_per_step": {name: round(value, 4) for name, value in median.items()}}
    for suffix, _ in precisions:
        result.update(ratios(median, suffix))
    if amp == "both":
        result["amp_speedup"] = {name: round(median[name + "_amp"] / median[name], 3)
                                 for name in median if not name.endswith("_amp")}
    if cuda:
        result.update({"gpu": torch.cuda.get_device_name(device),
                       "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                       "step_gpu_mib": {name: round(v, 1) for name, v in memory.items()},
                       "peak_gpu_mib": round(peak, 1)})
    if args.smoke:
        result["smoke"] = True
    print(json.dumps(result))


if __name__ == "__main__":
    main()
