"""--precision: one rule for the image encoders, and the decisions stay fp32."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_sam_generator import IMG_SIZE, photo, tiny_sam

from zsplg.masks.sam import build_sam_generator
from zsplg.runtime.device import DeviceError, check_precision_name, resolve_precision


def test_auto_is_fp32_off_a_gpu_and_names_are_checked() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(DeviceError, match="--precision"):
        check_precision_name("fp64")


def test_reduced_precision_encodes_in_it_and_decodes_in_fp32() -> None:
    """bf16 reaches the encoder; the decoder (whose outputs the IoU, stability and NMS
    filters read) gets fp32 embeddings and runs outside autocast."""
    model = tiny_sam()
    seen: dict[str, object] = {}

    def encoder_hook(module, inputs, output) -> None:
        seen["encoder_autocast"] = torch.is_autocast_enabled("cpu")

    def decoder_hook(module, args, kwargs) -> None:
        embeddings = kwargs.get("image_embeddings", args[0] if args else None)
        seen["decoder_dtype"] = embeddings.dtype
        seen["decoder_autocast"] = torch.is_autocast_enabled("cpu")

    model.image_encoder.register_forward_hook(encoder_hook)
    model.mask_decoder.register_forward_pre_hook(decoder_hook, with_kwargs=True)
    generator = build_sam_generator("vit_b", model=model, device="cpu", points_per_side=4,
                                    long_side=IMG_SIZE, precision="bf16")
    generator.generate(photo(48, 64))
    assert generator.config()["precision"] == "bf16"
    assert seen == {"encoder_autocast": True, "decoder_dtype": torch.float32,
                    "decoder_autocast": False}


def test_fp32_and_auto_give_the_same_masks_on_cpu() -> None:
    model, image = tiny_sam(), photo(48, 64)
    masks = [build_sam_generator("vit_b", model=model, device="cpu", points_per_side=4,
                                 long_side=IMG_SIZE, precision=p).generate(image).masks
             for p in ("fp32", "auto")]
    assert masks[0].shape == masks[1].shape and (masks[0] == masks[1]).all()


def test_cli_rejects_an_unknown_precision_in_one_line(tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "zsplg", "label", str(tmp_path),
                           "--classes", "a.txt", "--out", str(out), "--precision", "fp64"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --precision: 'fp64' is not one of auto, fp32, bf16, fp16"]
    assert not out.exists()
