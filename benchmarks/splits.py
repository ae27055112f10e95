"""The labelled subsets the benchmarks share, chosen once so every benchmark agrees.

CamVid's semi-supervised setting labels 46 of its 367 training images. They
are `random.Random(0).sample(sorted_train_lines, 46)`: the label-quality
benchmark calibrates on them and the training benchmark trains on them.
"""

from __future__ import annotations

import random
from pathlib import Path

CAMVID_LABELLED = 46


def camvid_labelled_subset(root: str | Path) -> list[str]:
    """The 46 labelled lines of CAMVID/train.txt, in sampled order (paths as in the file)."""
    lines = sorted(line.strip() for line in (Path(root) / "train.txt").read_text().splitlines()
                   if line.strip())
    return random.Random(0).sample(lines, CAMVID_LABELLED)


def write_list(lines: list[str], root: str | Path, out: str | Path) -> Path:
    """A pair-list of `lines` (relative to `root`) that works from any folder:
    entries are made absolute."""
    root = Path(root).resolve()
    rows = []
    for line in lines:
        rows.append(" ".join(str(root / field) for field in line.split()))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def camvid_lists(root: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """(labelled list, unlabelled-with-gt list) of CamVid train, written into out_dir.

    The second holds the other 321 train images, with their ground truth, for
    scoring pseudo labels of images the calibration never saw.
    """
    labelled = camvid_labelled_subset(root)
    chosen = set(labelled)
    rest = [line.strip() for line in (Path(root) / "train.txt").read_text().splitlines()
            if line.strip() and line.strip() not in chosen]
    out_dir = Path(out_dir)
    return (write_list(labelled, root, out_dir / "camvid_labelled.txt"),
            write_list(rest, root, out_dir / "camvid_train_rest.txt"))


DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _lines(path: Path) -> list[str]:
    return sorted(line.strip() for line in path.read_text().splitlines() if line.strip())


def camvid_split(root: Path = DATA / "camvid") -> dict[str, list[str]]:
    """Training-benchmark split: the 46 labelled, the other 321 train, all 367, and val."""
    labelled = sorted(camvid_labelled_subset(root))
    chosen = set(labelled)
    train = _lines(root / "train.txt")
    return {"labelled": labelled, "unlabelled": [x for x in train if x not in chosen],
            "all_train": train, "val": _lines(root / "val.txt")}


def kvasir_split(root: Path = DATA / "kvasir-seg") -> dict[str, list[str]]:
    """A fixed 20 % of all.txt held out for validation, 1/8 of all.txt labelled, the rest
    unlabelled."""
    lines = _lines(root / "all.txt")
    random.Random(0).shuffle(lines)
    n_val, n_labelled = len(lines) // 5, len(lines) // 8
    val, rest = lines[:n_val], lines[n_val:]
    return {"labelled": sorted(rest[:n_labelled]), "unlabelled": sorted(rest[n_labelled:]),
            "all_train": sorted(rest), "val": sorted(val)}


def voc_split(root: Path = DATA / "voc2012-mini") -> dict[str, list[str]]:
    """voc2012-mini's semi-supervised setting, the paper's dataset: 1/8 of train labelled
    (`random.Random(0).sample(sorted train lines, len // 8)`), the rest unlabelled, val
    reported. label_quality's few-label VOC rows use the same labelled lines."""
    train = _lines(root / "train.txt")
    labelled = sorted(random.Random(0).sample(train, len(train) // 8))
    chosen = set(labelled)
    return {"labelled": labelled, "unlabelled": [x for x in train if x not in chosen],
            "all_train": train, "val": _lines(root / "val.txt")}
