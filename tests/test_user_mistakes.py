"""User mistakes through the real CLI: exit 2, one `error: ` line naming the option or
file, no traceback, and no output folder left behind.

Every case runs `python -m zsplg.cli` in a subprocess with an empty weights folder,
so SAM and CLIP weights are missing. The images are tiny and the backends offline;
the device cases fail before any model loads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_data import make_dataset

CLASSES = "background\ncat\ncar\n"
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(),
                                   reason="this machine has a CUDA GPU")
not_macos = pytest.mark.skipif(sys.platform == "darwin", reason="mps may be usable on macOS")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("empty-weights")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Three 36x48 images and a classes file."""
    root = tmp_path_factory.mktemp("mistake-images")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        image = np.empty((36, 48, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        image[8:22, 10:30] = rng.integers(0, 256, 3)
        Image.fromarray(image).save(folder / f"img{i}.png")
    classes = root / "classes.txt"
    classes.write_text(CLASSES)
    return {"images": folder, "classes": classes}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, Path]:
    """A tiny labelled pair-list (images and ground truth) with its classes file."""
    return make_dataset(tmp_path_factory.mktemp("mistake-labelled"), n_labelled=3,
                        n_unlabelled=0, n_val=0, size=(36, 48))


def _run(args: list[str], weights_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update({"ZSPLG_WEIGHTS_DIR": str(weights_dir), "OMP_NUM_THREADS": "1"})
    return subprocess.run([sys.executable, "-m", "zsplg.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """Exit 2, no traceback, and stderr exactly one `error: ` line; returns that line."""
    shown = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    assert proc.returncode == 2, shown
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: "), shown
    assert len(proc.stderr.strip().splitlines()) == 1, shown  # no blank lines inside either
    return lines[0]


def _label(images: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["label", str(images["images"]), "--classes", str(images["classes"]),
            "--out", str(out), *extra]


OFFLINE = ("--masks", "superpixel", "--vl", "conse")


@needs_no_cuda
def test_label_device_cuda_without_gpu(images, weights_dir, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _run(_label(images, out, *OFFLINE, "--device", "cuda"), weights_dir, tmp_path)
    line = _error_line(proc)
    assert "--device" in line and "cuda" in line.lower()
    assert not out.exists()


@not_macos
def test_label_device_mps_off_macos(images, weights_dir, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _run(_label(images, out, *OFFLINE, "--device", "mps"), weights_dir, tmp_path)
    line = _error_line(proc)
    assert "--device" in line and "mps" in line
    assert not out.exists()


def test_label_misspelt_device(images, weights_dir, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _run(_label(images, out, *OFFLINE, "--device", "gpu"), weights_dir, tmp_path)
    line = _error_line(proc)
    assert "--device" in line and "gpu" in line
    assert not out.exists()


def test_label_sam_without_weights(images, weights_dir, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _run(_label(images, out, "--masks", "sam", "--vl", "conse", "--device", "cpu"),
                weights_dir, tmp_path)
    line = _error_line(proc)
    assert "zsplg weights fetch" in line or "--sam-checkpoint" in line, line
    assert not out.exists()


def test_label_clip_without_weights(images, weights_dir, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _run(_label(images, out, "--masks", "superpixel", "--vl", "clip-gem",
                       "--device", "cpu"), weights_dir, tmp_path)
    line = _error_line(proc)
    assert "zsplg weights fetch" in line or "--clip-checkpoint" in line, line
    assert not out.exists()


def test_label_config_file_missing(images, weights_dir, tmp_path) -> None:
    out, config = tmp_path / "out", tmp_path / "nowhere.yaml"
    proc = _run(_label(images, out, *OFFLINE, "--config", str(config)), weights_dir, tmp_path)
    line = _error_line(proc)
    assert config.name in line
    assert not out.exists()


def test_label_config_file_not_yaml(images, weights_dir, tmp_path) -> None:
    out, config = tmp_path / "out", tmp_path / "broken.yaml"
    config.write_text("masks: [superpixel\n  vl: : conse\n")
    proc = _run(_label(images, out, *OFFLINE, "--config", str(config)), weights_dir, tmp_path)
    line = _error_line(proc)
    assert config.name in line
    assert not out.exists()


def test_label_config_file_unknown_key(images, weights_dir, tmp_path) -> None:
    out, config = tmp_path / "out", tmp_path / "unknown.yaml"
    config.write_text("masks: superpixel\nfrobnicate: 3\n")
    proc = _run(_label(images, out, *OFFLINE, "--config", str(config)), weights_dir, tmp_path)
    line = _error_line(proc)
    assert config.name in line and "frobnicate" in line
    assert not out.exists()


@needs_no_cuda
def test_train_device_cuda_without_gpu(labelled, weights_dir, tmp_path) -> None:
    out = tmp_path / "run"
    proc = _run(["train", "--labelled", str(labelled["labelled"]),
                 "--classes", str(labelled["classes"]), "--out", str(out),
                 "--method", "supervised", "--device", "cuda"], weights_dir, tmp_path)
    line = _error_line(proc)
    assert "--device" in line
    assert not out.exists()


@needs_no_cuda
def test_calibrate_device_cuda_without_gpu(labelled, weights_dir, tmp_path) -> None:
    out = tmp_path / "out"
    target = out / "cal.json"
    proc = _run(["calibrate", "--list", str(labelled["labelled"]),
                 "--classes", str(labelled["classes"]), "--out", str(target),
                 "--device", "cuda"], weights_dir, tmp_path)
    line = _error_line(proc)
    assert "--device" in line
    assert not target.exists()
    assert not out.exists()


def test_eval_config_file_missing(labelled, weights_dir, tmp_path) -> None:
    root = labelled["labelled"].parent
    pred = root / "gt"  # any folder of index PNGs
    before = sorted(root.rglob("*"))
    proc = _run(["eval", "--pred", str(pred), "--list", str(labelled["labelled"]),
                 "--classes", str(labelled["classes"]), "--config", "missing.yaml"],
                weights_dir, tmp_path)
    line = _error_line(proc)
    assert "missing.yaml" in line
    assert sorted(root.rglob("*")) == before, "eval wrote a file"
    assert not (tmp_path / "missing.yaml").exists()
