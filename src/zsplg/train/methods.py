"""One training step per method: ``supervised``, ``unimatch`` and ``enhanced``.

``unimatch`` follows LiheYoung/UniMatch's unimatch.py step for step (teacher
in eval mode on the CutMix source, one train-mode pass over [labelled, weak]
with feature perturbation, one pass over both strong views, confidence 0.95,
weights 0.25/0.25/0.5, (L_s + L_u) / 2). ``enhanced`` is the same step with
the paper's change: the unlabelled targets are enhanced labels (zero-shot
pseudo label combined with the teacher by a named policy) and the unlabelled
terms use label-smoothed cross-entropy.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from zsplg.choices import TRAIN_METHODS
from zsplg.train.losses import (
    cutmix_targets,
    paste_cutmix,
    supervised_loss,
    weighted_pixel_loss,
)
from zsplg.train.targets import (
    DEFAULT_POLICY,
    TargetFn,
    policy_targets,
    teacher_prediction,
    unimatch_targets,
)

METHODS = TRAIN_METHODS


@dataclass(frozen=True)
class StepSettings:
    """The method's knobs; defaults are UniMatch's PASCAL settings."""

    method: str = "unimatch"
    policy: str = DEFAULT_POLICY
    conf_thresh: float = 0.95
    smoothing: float = 0.1
    weight_s1: float = 0.25
    weight_s2: float = 0.25
    weight_fp: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        policy_targets(self.policy)  # validates the name


def _targets_fn(settings: StepSettings) -> TargetFn:
    return unimatch_targets if settings.method == "unimatch" else policy_targets(settings.policy)


def supervised_step(model: nn.Module, img_x: torch.Tensor, mask_x: torch.Tensor,
                    autocast: AbstractContextManager | None = None
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    model.train()
    with autocast or nullcontext():
        loss = supervised_loss(model(img_x).float(), mask_x)
    return loss, {"loss": loss.item(), "loss_x": loss.item()}


def semi_supervised_step(model: nn.Module, settings: StepSettings, img_x: torch.Tensor,
                         mask_x: torch.Tensor, unlabelled: dict[str, torch.Tensor],
                         mix: dict[str, torch.Tensor],
                         autocast: AbstractContextManager | None = None
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """The weak-to-strong step; returns the loss to back-propagate and scalars to log.

    ``unlabelled`` and ``mix`` are batches from :class:`UnlabelledDataset`;
    ``mix`` is an independent batch, the CutMix source.
    """
    autocast = autocast or nullcontext()
    targets_fn = _targets_fn(settings)
    smoothing = settings.smoothing if settings.method == "enhanced" else 0.0
    img_u_w, ignore_mask = unlabelled["img_w"], unlabelled["ignore_mask"]
    box1, box2 = unlabelled["cutmix_box1"], unlabelled["cutmix_box2"]

    with torch.no_grad():
        model.eval()
        with autocast:
            pred_mix = model(mix["img_w"]).detach()
        mix_teacher, mix_conf = teacher_prediction(pred_mix)
        mix_target, mix_weight = targets_fn(mix_teacher, mix_conf, mix["pseudo"],
                                            settings.conf_thresh, mix.get("pseudo_weight"))

    img_u_s1 = paste_cutmix(unlabelled["img_s1"], box1, mix["img_s1"])
    img_u_s2 = paste_cutmix(unlabelled["img_s2"], box2, mix["img_s2"])

    model.train()
    num_x, num_u = img_x.shape[0], img_u_w.shape[0]
    with autocast:
        preds, preds_fp = model(torch.cat((img_x, img_u_w)), need_fp=True)
        pred_x, pred_u_w = preds.split([num_x, num_u])
        pred_u_w_fp = preds_fp[num_x:]
        pred_u_s1, pred_u_s2 = model(torch.cat((img_u_s1, img_u_s2))).chunk(2)

    teacher, conf = teacher_prediction(pred_u_w)
    target, weight = targets_fn(teacher, conf, unlabelled["pseudo"], settings.conf_thresh,
                                unlabelled.get("pseudo_weight"))
    target1, weight1, ignore1 = cutmix_targets(target, weight, ignore_mask, box1, mix_target,
                                               mix_weight, mix["ignore_mask"])
    target2, weight2, ignore2 = cutmix_targets(target, weight, ignore_mask, box2, mix_target,
                                               mix_weight, mix["ignore_mask"])

    loss_x = supervised_loss(pred_x.float(), mask_x)
    loss_s1 = weighted_pixel_loss(pred_u_s1.float(), target1, weight1, ignore1, smoothing)
    loss_s2 = weighted_pixel_loss(pred_u_s2.float(), target2, weight2, ignore2, smoothing)
    loss_fp = weighted_pixel_loss(pred_u_w_fp.float(), target, weight, ignore_mask, smoothing)
    loss_u = (settings.weight_s1 * loss_s1 + settings.weight_s2 * loss_s2
              + settings.weight_fp * loss_fp)
    loss = (loss_x + loss_u) / 2.0

    valid = ignore_mask != 255
    counted = ((weight > 0) & valid & (target != 255)).sum().item()
    mask_ratio = counted / max(int(valid.sum().item()), 1)
    return loss, {"loss": loss.item(), "loss_x": loss_x.item(), "loss_u": loss_u.item(),
                  "loss_s": ((loss_s1 + loss_s2) / 2).item(), "loss_fp": loss_fp.item(),
                  "mask_ratio": mask_ratio}
