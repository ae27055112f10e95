"""Seconds per `unimatch` training step: zsplg's step against the reference step.

The reference is a plain-PyTorch transcription of the step in
LiheYoung/UniMatch's unimatch.py (teacher on the CutMix source, in-place
CutMix of images and targets, confidence masks, 0.25/0.25/0.5 weights,
(loss_x + loss_u) / 2), written here for the comparison. Both run on the same
DeepLabV3+ model, the same batch and crop, with forward, backward and the SGD
update, alternating so machine load affects both alike. Data loading is
excluded: it is the same code for both.

    python benchmarks/train_step.py [--steps 6] [--batch-size 4] [--crop 256] [--quick]

Prints JSON. The headline compares the two steps in the same memory layout:
``ratio_nchw`` (both NCHW) and ``ratio_channels_last`` (both channels_last), ours /
reference seconds per step (at most 1.0 = no slower). What the layout itself buys
is reported apart: ``layout_gain_ours`` and ``layout_gain_reference`` (channels_last /
NCHW seconds, below 1.0 = channels_last is faster). zsplg's trainer runs in
channels_last; UniMatch's script runs in NCHW.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from zsplg.train.methods import StepSettings, semi_supervised_step
from zsplg.train.model import build_model


def reference_step(model: nn.Module, img_x, mask_x, img_u_w, img_u_s1, img_u_s2, ignore_mask,
                   cutmix_box1, cutmix_box2, img_u_w_mix, img_u_s1_mix, img_u_s2_mix,
                   ignore_mask_mix, conf_thresh: float = 0.95) -> torch.Tensor:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8,
                        help="timed steps per pipeline (a multiple of 4 rotates evenly)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--quick", action="store_true", help="3 steps, batch 2, crop 128")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.crop = 4, 2, 128

    torch.manual_seed(0)
    model = build_model(args.backbone, args.classes, pretrained=False)
    # Same weights, own optimisers; each step code runs in both layouts.
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    ref_model = copy.deepcopy(model)
    ref_model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    optimizer_cl = torch.optim.SGD(model_cl.parameters(), lr=1e-4, momentum=0.9)
    ref_optimizer = torch.optim.SGD(ref_model.parameters(), lr=1e-4, momentum=0.9)
    ref_optimizer_cl = torch.optim.SGD(ref_model_cl.parameters(), lr=1e-4, momentum=0.9)
    settings = StepSettings(method="unimatch")
    b = make_batch(args.batch_size, args.crop, args.classes, seed=0)
    b_cl = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
            for k, v in b.items()}

    def ours_step(net: nn.Module, opt: torch.optim.Optimizer, batch: dict) -> None:
        opt.zero_grad(set_to_none=True)
        u = {"img_w": batch["img_w"], "img_s1": batch["img_s1"], "img_s2": batch["img_s2"],
             "ignore_mask": batch["ignore_mask"], "cutmix_box1": batch["cutmix_box1"],
             "cutmix_box2": batch["cutmix_box2"], "pseudo": batch["pseudo"]}
        mix = {"img_w": batch["mix_w"], "img_s1": batch["mix_s1"], "img_s2": batch["mix_s2"],
               "ignore_mask": batch["mix_ignore"], "pseudo": batch["pseudo"]}
        loss, _ = semi_supervised_step(net, settings, batch["img_x"], batch["mask_x"], u, mix)
        loss.backward()
        opt.step()

    def reference(net: nn.Module, opt: torch.optim.Optimizer, batch: dict) -> None:
        opt.zero_grad(set_to_none=True)
        loss = reference_step(net, batch["img_x"], batch["mask_x"], batch["img_w"],
                              batch["img_s1"].clone(), batch["img_s2"].clone(),
                              batch["ignore_mask"], batch["cutmix_box1"], batch["cutmix_box2"],
                              batch["mix_w"], batch["mix_s1"], batch["mix_s2"],
                              batch["mix_ignore"])
        loss.backward()
        opt.step()

    pipelines = {"reference_nchw": lambda: reference(ref_model, ref_optimizer, b),
                 "ours_nchw": lambda: ours_step(model, optimizer, b),
                 "reference_channels_last": lambda: reference(ref_model_cl, ref_optimizer_cl,
                                                              b_cl),
                 "ours_channels_last": lambda: ours_step(model_cl, optimizer_cl, b_cl)}
    for fn in pipelines.values():  # warm-up (allocator, kernels)
        fn()
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    # Rotating order: whichever step runs right after another pays for its freed memory
    # (measured: up to 1.2x), so each pipeline takes every position equally often.
    names = list(pipelines)
    for i in range(args.steps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            pipelines[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    seconds = {name: round(value, 4) for name, value in median.items()}
    print(json.dumps({"backbone": args.backbone, "batch_size": args.batch_size,
                      "crop": args.crop, "steps": args.steps, "threads": torch.get_num_threads(),
                      "s_per_step": seconds,
                      "ratio_nchw": round(median["ours_nchw"] / median["reference_nchw"], 3),
                      "ratio_channels_last": round(median["ours_channels_last"]
                                                   / median["reference_channels_last"], 3),
                      "layout_gain_ours": round(median["ours_channels_last"]
                                                / median["ours_nchw"], 3),
                      "layout_gain_reference": round(median["reference_channels_last"]
                                                     / median["reference_nchw"], 3)}))

if __name__ == "__main__":
    main()
