"""Loss terms, enhanced-label policies and the step weighting, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zsplg.train.losses import (
    cutmix_targets,
    paste_cutmix,
    supervised_loss,
    weighted_pixel_loss,
)
from zsplg.train.methods import StepSettings, semi_supervised_step
from zsplg.train.targets import (
    agreement_targets,
    confident_teacher_targets,
    policy_targets,
    replace_targets,
    teacher_prediction,
    unimatch_targets,
)


def _nll(logits: list[float], cls: int) -> float:
    return -math.log(math.exp(logits[cls]) / sum(math.exp(v) for v in logits))


def test_weighted_pixel_loss_divides_by_non_ignored_pixels() -> None:
    # 1 image, 2 classes, 1x3 pixels
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])
    target = torch.tensor([[[0, 1, 0]]])
    weight = torch.tensor([[[1.0, 0.0, 1.0]]])  # middle pixel not confident
    ignore = torch.tensor([[[0, 0, 255]]])  # last pixel is padding
    got = weighted_pixel_loss(logits, target, weight, ignore)
    expected = _nll([2.0, 0.0], 0) / 2  # one counted pixel, two non-ignored
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_matches_formula() -> None:
    logits = torch.tensor([[[[1.0]], [[3.0]], [[-1.0]]]])
    target = torch.tensor([[[1]]])
    ones = torch.ones(1, 1, 1)
    eps = 0.1
    got = weighted_pixel_loss(logits, target, ones, torch.zeros(1, 1, 1, dtype=torch.long), eps)
    values = [1.0, 3.0, -1.0]
    expected = (1 - eps) * _nll(values, 1) + eps * sum(_nll(values, c) for c in range(3)) / 3
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ignore_target_pixels_count_nothing() -> None:
    logits = torch.randn(1, 3, 2, 2)
    target = torch.full((1, 2, 2), 255)
    got = weighted_pixel_loss(logits, target, torch.ones(1, 2, 2),
                              torch.zeros(1, 2, 2, dtype=torch.long))
    assert got.item() == 0.0


def test_supervised_loss_all_ignored_is_zero_with_graph() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = supervised_loss(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_cutmix_targets_take_box_from_source() -> None:
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    weight = torch.ones(1, 2, 2)
    ignore = torch.zeros(1, 2, 2, dtype=torch.long)
    box = torch.tensor([[[1, 0], [0, 0]]])
    t, w, i = cutmix_targets(target, weight, ignore, box, torch.full((1, 2, 2), 7),
                             torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 255))
    assert t.tolist() == [[[7, 0], [0, 0]]]
    assert w.tolist() == [[[0.5, 1.0], [1.0, 1.0]]]
    assert i.tolist() == [[[255, 0], [0, 0]]]
    image = torch.zeros(1, 3, 2, 2)
    pasted = paste_cutmix(image, box, torch.ones(1, 3, 2, 2))
    assert pasted[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and pasted[0, :, 1, 1].sum() == 0


# teacher classes / confidences / zero-shot labels over four pixels:
# pixel 0: confident, agrees; 1: confident, disagrees; 2: unsure, has pseudo; 3: unsure, none
TEACHER = torch.tensor([[1, 1, 2, 0]])
CONF = torch.tensor([[0.99, 0.97, 0.50, 0.40]])
PSEUDO = torch.tensor([[1, 3, 4, 255]])


def test_unimatch_targets_ignore_pseudo() -> None:
    t, w = unimatch_targets(TEACHER, CONF, PSEUDO, 0.95)
    assert t.tolist() == TEACHER.tolist() and w.tolist() == [[1.0, 1.0, 0.0, 0.0]]


def test_replace_policy() -> None:
    t, w = replace_targets(TEACHER, CONF, PSEUDO, 0.95)
    assert t.tolist() == [[1, 3, 4, 0]] and w.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_confident_teacher_policy() -> None:
    t, w = confident_teacher_targets(TEACHER, CONF, PSEUDO, 0.95)
    assert t.tolist() == [[1, 1, 4, 255]] and w.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_agreement_policy() -> None:
    t, w = agreement_targets(TEACHER, CONF, PSEUDO, 0.95)
    assert t.tolist() == TEACHER.tolist() and w.tolist() == [[1.0, 0.5, 0.0, 0.0]]


def test_unknown_policy_named_in_error() -> None:
    with pytest.raises(ValueError, match="no-such"):
        policy_targets("no-such")
    with pytest.raises(ValueError, match="method"):
        StepSettings(method="fixmatch")


class PointwiseModel(nn.Module):
    """1x1 convolution; the 'perturbed' output is a fixed function of the clean one,
    so every loss term can be recomputed by hand."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor, need_fp: bool = False):
        out = self.conv(x)
        return (out, out * 0.5) if need_fp else out


def test_semi_supervised_step_weighting_by_hand() -> None:
    torch.manual_seed(1)
    model = PointwiseModel()
    b, s = 2, 4
    img_x = torch.randn(b, 3, s, s)
    mask_x = torch.randint(0, 3, (b, s, s))
    box = torch.zeros(b, s, s, dtype=torch.long)
    box[:, :2, :2] = 1

    def batch(seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        ignore = torch.zeros(b, s, s, dtype=torch.long)
        ignore[:, -1, :] = 255
        return {"img_w": torch.randn(b, 3, s, s, generator=g),
                "img_s1": torch.randn(b, 3, s, s, generator=g),
                "img_s2": torch.randn(b, 3, s, s, generator=g),
                "ignore_mask": ignore, "cutmix_box1": box, "cutmix_box2": 1 - box,
                "pseudo": torch.randint(0, 3, (b, s, s), generator=g)}

    u, mix = batch(2), batch(3)
    settings = StepSettings(method="enhanced", policy="replace", conf_thresh=0.5, smoothing=0.1)
    loss, logs = semi_supervised_step(model, settings, img_x, mask_x, u, mix)

    with torch.no_grad():
        conv = model.conv
        mix_t, mix_c = teacher_prediction(conv(mix["img_w"]))
        mix_target, mix_w = replace_targets(mix_t, mix_c, mix["pseudo"], 0.5)
        w_logits = conv(u["img_w"])
        t, c = teacher_prediction(w_logits)
        target, weight = replace_targets(t, c, u["pseudo"], 0.5)

        def term(logits, tgt, wgt, ign):
            ce = F.cross_entropy(logits, tgt, reduction="none", label_smoothing=0.1)
            counted = (ce * wgt * (ign != 255)).sum()
            return counted / (ign != 255).sum()

        def mixed(view, box_):
            img = torch.where(box_.unsqueeze(1) == 1, mix[view], u[view])
            tgt = torch.where(box_ == 1, mix_target, target)
            wgt = torch.where(box_ == 1, mix_w, weight)
            ign = torch.where(box_ == 1, mix["ignore_mask"], u["ignore_mask"])
            return term(conv(img), tgt, wgt, ign)

        loss_x = F.cross_entropy(conv(img_x), mask_x)
        loss_s1 = mixed("img_s1", box)
        loss_s2 = mixed("img_s2", 1 - box)
        loss_fp = term(w_logits * 0.5, target, weight, u["ignore_mask"])
        expected = (loss_x + 0.25 * loss_s1 + 0.25 * loss_s2 + 0.5 * loss_fp) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["loss_x"] == pytest.approx(loss_x.item(), rel=1e-5)
    assert 0.0 <= logs["mask_ratio"] <= 1.0
    loss.backward()
    assert model.conv.weight.grad is not None
