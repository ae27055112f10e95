"""Loss terms of weak-to-strong training, as small pure functions.

Kept apart from the training step so each term can be checked against
hand-computed values on fixed tensors: the normalisation (sum over counted
pixels divided by the number of non-ignored pixels, as UniMatch does it) is
easy to get subtly wrong and changes the effective loss weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zsplg import IGNORE_INDEX


def supervised_loss(logits: torch.Tensor, target: torch.Tensor,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels.

    A batch with no labelled pixel gives a zero that keeps the graph, so
    backward() and DDP's gradient sync still run on every process.
    """
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def weighted_pixel_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                        ignore_mask: torch.Tensor, smoothing: float = 0.0,
                        ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-pixel (optionally label-smoothed) cross-entropy times ``weight``, summed and
    divided by the number of pixels that are not padding.

    Dividing by the non-ignored count rather than by the counted (confident)
    pixels is UniMatch's choice: the loss shrinks while the teacher is unsure,
    which acts as a built-in warm-up. ``target`` may hold ``ignore_index``;
    those pixels contribute nothing whatever their weight.
    """
    safe_target = target.masked_fill(target == ignore_index, 0)
    per_pixel = F.cross_entropy(logits, safe_target, reduction="none", label_smoothing=smoothing)
    valid = (ignore_mask != ignore_index) & (target != ignore_index)
    per_pixel = per_pixel * weight.to(per_pixel.dtype) * valid.to(per_pixel.dtype)
    denominator = int((ignore_mask != ignore_index).sum().item())
    return per_pixel.sum() / max(denominator, 1)


def cutmix_targets(target: torch.Tensor, weight: torch.Tensor, ignore_mask: torch.Tensor,
                   box: torch.Tensor, mix_target: torch.Tensor, mix_weight: torch.Tensor,
                   mix_ignore_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets for a CutMix-ed strong view: inside the box, everything comes from the source."""
    inside = box == 1
    return (torch.where(inside, mix_target, target), torch.where(inside, mix_weight, weight),
            torch.where(inside, mix_ignore_mask, ignore_mask))


def paste_cutmix(image: torch.Tensor, box: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The strong view with the CutMix box filled from the source image (a new tensor)."""
    return torch.where(box.unsqueeze(1) == 1, source, image)
