"""DeepLabV3+ as UniMatch's reference builds it, over any zsplg backbone.

Structure (LiheYoung/UniMatch model/semseg/deeplabv3plus.py): ASPP on the
stride-16 features (1x1, three 3x3 atrous convs at rates 6/12/18, image
pooling, 1x1 projection), low-level stride-4 features reduced to 48 channels,
two 3x3 fuse convs, a 1x1 classifier, bilinear upsampling with
align_corners=True. One deliberate difference: the ASPP width is a fixed 256
channels instead of UniMatch's high_channels // 8 (which is 256 for ResNet but
would be 40 for EfficientNet-Lite0's 320-channel output).

Feature perturbation (`need_fp=True`) follows UniMatch exactly: c1 and c4 are
concatenated along the batch with channel-dropout copies of themselves
(Dropout2d, applied even in eval mode, as the reference's freshly built
module does) and decoded in one pass, so BatchNorm sees clean and perturbed
features together.
"""

from __future__ import annotations

from os import PathLike

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from zsplg.train.backbones import Backbone, build_backbone

ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
ASPP_RATES = (6, 12, 18)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv, broadcast back to the map size."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_ch, out_ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.gap(x), size=x.shape[-2:], mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five parallel branches, concatenated, projected."""

    def __init__(self, in_ch: int, out_ch: int = ASPP_CHANNELS,
                 rates: tuple[int, int, int] = ASPP_RATES) -> None:
        super().__init__()
        self.b0 = _conv_bn_relu(in_ch, out_ch, 1)
        self.b1, self.b2, self.b3 = (_conv_bn_relu(in_ch, out_ch, 3, r) for r in rates)
        self.b4 = ASPPPooling(in_ch, out_ch)
        self.project = _conv_bn_relu(5 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x))
        return self.project(torch.cat(branches, dim=1))


class DeepLabV3Plus(nn.Module):
    """`model(x)` -> logits (B, C, H, W); `model(x, need_fp=True)` -> (logits, logits_fp)."""

    def __init__(self, backbone: Backbone, num_classes: int, fp_dropout: float = 0.5,
                 head_channels: int = ASPP_CHANNELS) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.fp_dropout = fp_dropout
        self.head = ASPP(backbone.high_channels, head_channels)
        self.reduce = _conv_bn_relu(backbone.low_channels, LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(head_channels + LOW_LEVEL_CHANNELS, head_channels, 3),
            _conv_bn_relu(head_channels, head_channels, 3),
        )
        self.classifier = nn.Conv2d(head_channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor, need_fp: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        c1, c4 = self.backbone(x)
        if need_fp:
            # training=True always: UniMatch builds a fresh (train-mode) Dropout2d here.
            c1 = torch.cat((c1, F.dropout2d(c1, self.fp_dropout, training=True)))
            c4 = torch.cat((c4, F.dropout2d(c4, self.fp_dropout, training=True)))
            out = self._upsample(self._decode(c1, c4), size)
            clean, perturbed = out.chunk(2)
            return clean, perturbed
        return self._upsample(self._decode(c1, c4), size)

    @staticmethod
    def _upsample(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)

    def _decode(self, c1: torch.Tensor, c4: torch.Tensor) -> torch.Tensor:
        c4 = self.head(c4)
        c4 = F.interpolate(c4, size=c1.shape[-2:], mode="bilinear", align_corners=True)
        feature = self.fuse(torch.cat((self.reduce(c1), c4), dim=1))
        return self.classifier(feature)

    def param_groups(self, lr: float, head_lr_multiplier: float) -> list[dict]:
        """SGD groups: the (pretrained) backbone at `lr`, the freshly built decoder faster.

        Every trainable parameter is in exactly one group.
        """
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [
            {"params": backbone, "lr": lr, "name": "backbone"},
            {"params": head, "lr": lr * head_lr_multiplier, "name": "head"},
        ]


def build_model(backbone: str, num_classes: int, pretrained: bool = True,
                weights_path: str | PathLike[str] | None = None,
                fp_dropout: float = 0.5, head_channels: int = ASPP_CHANNELS) -> DeepLabV3Plus:
    """DeepLabV3+ over the named backbone (see zsplg.train.backbones.build_backbone).

    head_channels: width of ASPP and the fuse convolutions (256 in the
    reference). The stride-4 fuse convolutions dominate the cost, which grows
    with the square of the width, so 128 is a CPU budget's choice for small
    backbones.
    """
    return DeepLabV3Plus(build_backbone(backbone, pretrained, weights_path), num_classes,
                         fp_dropout, head_channels)
