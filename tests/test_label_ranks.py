"""`zsplg label` under torchrun: the ranks split the images and rank 0 merges the records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _images(folder: Path) -> None:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    for i in range(5):
        image = np.full((32, 40, 3), rng.integers(0, 256, 3), np.uint8)
        image[8:24, 10:30] = rng.integers(0, 256, 3)
        Image.fromarray(image).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"")  # recorded as a failure by whichever rank


def _label_args(images: Path, classes: Path, out: Path) -> list[str]:
    return ["-m", "zsplg.cli", "label", str(images), "--classes", str(classes), "--out",
            str(out), "--masks", "superpixel", "--vl", "conse"]


def test_two_ranks_split_images_and_match_one_process(tmp_path) -> None:
    images, classes = tmp_path / "images", tmp_path / "classes.txt"
    _images(images)
    classes.write_text("background\ncat\ncar\n")
    single, ranked = tmp_path / "single", tmp_path / "ranked"
    one = subprocess.Popen([sys.executable, *_label_args(images, classes, single)], env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", *_label_args(images, classes, ranked)],
                         env=ENV, capture_output=True, text=True, timeout=400)
    assert one.wait(timeout=400) == 0, one.stderr.read()[-2000:]
    assert two.returncode == 0, two.stderr[-3000:]

    run = json.loads((ranked / "run.json").read_text())
    assert run["status"] == "finished" and run["world_size"] == 2
    assert run["counts"] == {"images": 6, "labelled": 5, "already_done": 0, "failed": 1}
    errors = (ranked / "errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and "broken.png" in errors[0]
    assert not list(ranked.glob("*.rank*")), "per-rank files were not merged"
    for i in range(5):
        for sub in ("labels", "confidence"):
            a = (single / sub / f"img{i}.png").read_bytes()
            assert a == (ranked / sub / f"img{i}.png").read_bytes(), f"{sub}/img{i}.png"
