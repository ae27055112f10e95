"""Whole-image and sliding-window inference, shared by validation and ``zsplg predict``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, image: torch.Tensor, mode: str = "whole",
                   window: int = 513, stride: int | None = None) -> torch.Tensor:
    """Class logits (1, C, H, W) for one normalised image (1, 3, H, W).

    Sliding windows are for images far larger than the training crop, where a
    whole-image pass would see objects at a scale the model never trained on
    (and may not fit in memory); overlapping windows are averaged.
    """
    if mode == "whole":
        return model(image).float()
    if mode != "sliding":
        raise ValueError(f"unknown inference mode {mode!r}; use whole or sliding")
    stride = stride or max(window * 2 // 3, 1)
    _, _, h, w = image.shape
    pad_h, pad_w = max(window - h, 0), max(window - w, 0)
    padded = F.pad(image, (0, pad_w, 0, pad_h)) if pad_h or pad_w else image
    ph, pw = padded.shape[-2:]
    tops = list(range(0, max(ph - window, 0) + 1, stride))
    lefts = list(range(0, max(pw - window, 0) + 1, stride))
    if tops[-1] + window < ph:
        tops.append(ph - window)
    if lefts[-1] + window < pw:
        lefts.append(pw - window)
    total: torch.Tensor | None = None
    counts = torch.zeros((1, 1, ph, pw), device=image.device)
    for top in tops:
        for left in lefts:
            crop = padded[:, :, top:top + window, left:left + window]
            logits = model(crop).float()
            if total is None:
                total = torch.zeros((1, logits.shape[1], ph, pw), device=image.device)
            total[:, :, top:top + window, left:left + window] += logits
            counts[:, :, top:top + window, left:left + window] += 1
    assert total is not None
    return (total / counts)[:, :, :h, :w]
