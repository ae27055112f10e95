"""DeepLabV3+ and its backbones: shapes, feature perturbation, weights, DDP-readiness."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from zsplg.data.errors import InputError
from zsplg.runtime.weights import WeightsMissingError
from zsplg.train.backbones import build_backbone
from zsplg.train.model import DeepLabV3Plus, build_model
from zsplg.vl.efficientnet_lite import build_efficientnet_lite

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLASSES = 5
# (backbone, pretrained): the packaged EfficientNet-Lite weights are installed, the
# ResNet ImageNet weights are not (they need `zsplg weights fetch`), timm loads only files.
FAMILIES = [("efficientnet-lite0", True), ("resnet50", False), ("timm:resnet18", False)]
_MODELS: dict[str, DeepLabV3Plus] = {}


def model_for(name: str, pretrained: bool) -> DeepLabV3Plus:
    """One model per backbone for the module (building a ResNet-50 costs a second)."""
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = build_model(name, NUM_CLASSES, pretrained=pretrained)
    return _MODELS[name]


def image_batch(batch: int = 2, height: int = 64, width: int = 80) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "pretrained"), FAMILIES)
def test_backbone_strides_and_channels(name, pretrained):
    backbone = model_for(name, pretrained).backbone
    low, high = backbone(image_batch())
    assert low.shape == (2, backbone.low_channels, 16, 20)  # stride 4
    assert high.shape == (2, backbone.high_channels, 4, 5)  # stride 16


@pytest.mark.parametrize(("name", "pretrained"), FAMILIES)
def test_logits_at_input_size_and_feature_perturbation(name, pretrained):
    model = model_for(name, pretrained)
    x = image_batch(height=72, width=56)  # not a multiple of 16
    model.eval()
    with torch.no_grad():
        logits = model(x)
        clean, perturbed = model(x, need_fp=True)
    assert logits.shape == (2, NUM_CLASSES, 72, 56)
    assert perturbed.shape == clean.shape == logits.shape
    # In eval mode BatchNorm is per-sample, so the clean half of the joint pass is the
    # plain forward, and the dropout half (applied even in eval, as UniMatch does) is not.
    torch.testing.assert_close(clean, logits, rtol=1e-4, atol=1e-4)
    assert (perturbed - clean).abs().max() > 1e-3

    state = copy.deepcopy(model.state_dict())  # train mode moves the BN statistics
    model.train()
    try:
        clean, perturbed = model(x, need_fp=True)
        assert clean.shape == perturbed.shape == (2, NUM_CLASSES, 72, 56)
        assert (perturbed - clean).abs().max() > 1e-3
        (clean.mean() + perturbed.mean()).backward()
        assert all(p.grad is not None for p in model.parameters())  # no unused params for DDP
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(state)
        model.eval()


def test_fp_dropout_zero_gives_identical_halves():
    torch.manual_seed(0)
    model = build_model("timm:resnet18", NUM_CLASSES, pretrained=False, fp_dropout=0.0).train()
    clean, perturbed = model(image_batch(), need_fp=True)
    torch.testing.assert_close(clean, perturbed)


def test_efficientnet_lite_backbone_holds_the_packaged_imagenet_weights():
    backbone = build_backbone("efficientnet-lite0", pretrained=True)
    classifier = build_efficientnet_lite("efficientnet-lite0", weights="packaged")
    x = image_batch()
    with torch.no_grad():
        low, _ = backbone.eval()(x)
        # The classifier wants [-1, 1] inputs; the backbone re-normalises ImageNet ones.
        y = (x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
             + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) - 0.5) / 0.5
        expected = classifier.blocks[1](classifier.blocks[0](classifier.bn1(
            classifier.conv_stem(y))))
        random_low, _ = build_backbone("efficientnet-lite0", pretrained=False).eval()(x)
    torch.testing.assert_close(low, expected, rtol=1e-4, atol=1e-4)
    assert (random_low - expected).abs().max() > 0.1


def test_param_groups_cover_every_parameter_once():
    model = model_for("efficientnet-lite0", True)
    groups = model.param_groups(0.01, 10.0)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups[0]["params"]} == backbone_ids
    assert groups[0]["lr"] == 0.01 and groups[1]["lr"] == pytest.approx(0.1)
    assert {id(p) for p in model.classifier.parameters()} <= {id(p) for p in groups[1]["params"]}
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # accepted as is


@pytest.mark.parametrize("name", ["efficientnet-lite0", "timm:resnet18"])
def test_channels_last_forward_matches_contiguous(name):
    model = model_for(name, name == "efficientnet-lite0").eval()
    x = image_batch()
    with torch.no_grad():
        reference = model(x)
        model.to(memory_format=torch.channels_last)
        try:
            fast = model(x.contiguous(memory_format=torch.channels_last))
        finally:
            model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_sync_batchnorm_conversion_keeps_the_outputs():
    """timm's fused BatchNormAct2d would lose its activation in the conversion."""
    model = model_for("efficientnet-lite0", True).eval()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()
    kinds = {type(m) for m in converted.modules()}
    assert nn.SyncBatchNorm in kinds
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    x = image_batch()
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-5)


def test_resnet_weights_missing_names_the_fetch_command():
    with pytest.raises(WeightsMissingError, match="zsplg weights fetch resnet50-imagenet"):
        build_backbone("resnet50", pretrained=True)


def test_resnet_dilated_last_stage():
    backbone = model_for("resnet50", False).backbone
    assert backbone.layer4[0].conv2.dilation == (1, 1) and backbone.layer4[0].conv2.stride == (1, 1)
    assert backbone.layer4[1].conv2.dilation == (2, 2)


def test_timm_backbone_loads_a_local_checkpoint(tmp_path):
    source = timm.create_model("mobilenetv3_small_050")
    path = tmp_path / "mnv3.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("timm:mobilenetv3_small_050", pretrained=True, weights_path=path)
    torch.testing.assert_close(backbone.features.conv_stem.weight, source.conv_stem.weight)
    low, high = backbone(image_batch())
    assert low.shape[-2:] == (16, 20) and high.shape[-2:] == (4, 5)

    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(3)}, junk)
    with pytest.raises(InputError, match="junk.pth.*encoder weights missing"):
        build_backbone("timm:mobilenetv3_small_050", pretrained=True, weights_path=junk)


def test_timm_without_weights_is_random_and_says_so():
    with pytest.warns(UserWarning, match="randomly initialised"):
        build_backbone("timm:mobilenetv3_small_050", pretrained=True)


def test_unknown_backbones_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="efficientnet-lite0.*resnet101.*timm:<model_name>"):
        build_backbone("resnet34", pretrained=False)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_backbone("timm:no_such_model_xyz", pretrained=False)
