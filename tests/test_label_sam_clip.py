"""The full `zsplg label` path on the paper's backends: tiny random SAM and CLIP
built with segment-anything's and open_clip's own classes (no real weights
exist here), through run_label, the same function the CLI calls."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_clip_gem import tiny_clip
from test_sam_generator import photo, tiny_sam

from zsplg.data.classes import load_class_spec
from zsplg.labeling.run import LabelConfig, Labeller, run_label
from zsplg.masks import build_mask_generator, resolve_mask_generator_name
from zsplg.masks.sam import build_sam_generator
from zsplg.runtime.weights import WeightsMissingError
from zsplg.vl import build_vl_model, resolve_vl_name
from zsplg.vl.clip_gem import build_clip_backend


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSPLG_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(photo(96, 128, "astronaut")).save(images / "astronaut.png")
    Image.fromarray(photo(80, 80, "coffee")).save(images / "coffee.jpg")
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nperson\ncup\n")
    return tmp_path


def test_label_runs_end_to_end_on_tiny_sam_and_clip(workspace, monkeypatch):
    spec = load_class_spec(workspace / "classes.txt")
    generator = build_sam_generator("vit_b", model=tiny_sam(), device="cpu",
                                    points_per_side=8, pred_iou_thresh=0.0, long_side=256,
                                    stability_score_thresh=0.5)
    backend = build_clip_backend(model=tiny_clip(), device="cpu", input_size=64, gem_depth=2)
    labeller = Labeller(spec, generator, backend)
    out = workspace / "out"
    config = LabelConfig(classes=str(workspace / "classes.txt"), out=str(out),
                         images_dir=str(workspace / "images"))
    info = run_label(config, labeller=labeller)
    assert info["counts"] == {"images": 2, "labelled": 2, "already_done": 0, "failed": 0}
    assert info["backends"]["masks"]["name"] == "sam"
    assert info["backends"]["vl"]["name"] == "clip-gem"
    for key, size in (("astronaut", (96, 128)), ("coffee", (80, 80))):
        label = Image.open(out / "labels" / f"{key}.png")
        assert label.mode == "P" and label.size == (size[1], size[0])
        assert set(np.unique(np.array(label))) <= {0, 1, 2, 255}
        assert Image.open(out / "confidence" / f"{key}.png").size == (size[1], size[0])
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_auto_falls_back_to_offline_backends_without_weights(workspace):
    assert resolve_mask_generator_name("auto") == "superpixel"
    assert resolve_vl_name("auto") == "conse"


def test_auto_picks_paper_backends_when_weights_are_present(workspace, monkeypatch):
    weights = workspace / "no-weights"
    weights.mkdir()
    (weights / "sam_vit_b_01ec64.pth").write_bytes(b"")
    assert resolve_mask_generator_name("auto") == "sam-vit-b"
    assert resolve_mask_generator_name("auto", "/x/sam_vit_h_4b8939.pth") == "sam-vit-h"
    assert resolve_vl_name("auto", clip_checkpoint="/x/ViT-B-16.pt") == "clip-gem"


def test_missing_paper_weights_name_the_fetch_command(workspace):
    with pytest.raises(WeightsMissingError, match="zsplg weights fetch sam-vit-b"):
        build_mask_generator("sam-vit-b", device="cpu")
    with pytest.raises(WeightsMissingError, match="zsplg weights fetch clip-vit-b-16-openai"):
        build_vl_model("clip-gem", device="cpu")
