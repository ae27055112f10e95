"""A smaller copy of a dataset folder (and of a `zsplg label` run over it), for a machine
that must receive it over a size limit, such as the GPU machine of gpu_suite.sh.

Images are resized to ``--long-side`` (bilinear, saved as JPEG), label and pseudo-label
PNGs with nearest-neighbour (class ids and 255 stay ids), confidence PNGs bilinear; the
lists, classes.txt and run.json are copied, so every split of benchmarks/splits.py picks
the same lines.

    python benchmarks/shrink_dataset.py ../shared/data/camvid /tmp/camvid-480 --long-side 480 \
        --run /tmp/camvid-pseudo /tmp/camvid-pseudo-480
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def _resize(src: Path, dst: Path, long_side: int, resample: int) -> None:
    image = Image.open(src)
    scale = long_side / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             resample)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst, quality=92) if dst.suffix.lower() in (".jpg", ".jpeg") else image.save(dst)


def shrink_dataset(src: Path, dst: Path, long_side: int) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for list_file in src.glob("*.txt"):
        shutil.copy(list_file, dst / list_file.name)
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix == ".txt":
            continue
        rel = path.relative_to(src)
        if path.suffix.lower() == ".png" and "labels" in rel.parts:
            _resize(path, dst / rel, long_side, Image.NEAREST)
        elif path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            _resize(path, dst / rel, long_side, Image.BILINEAR)


def shrink_run(src: Path, dst: Path, long_side: int) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(src)
        if path.suffix.lower() != ".png":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dst / rel)
        elif rel.parts[0] == "confidence":
            _resize(path, dst / rel, long_side, Image.BILINEAR)
        else:
            _resize(path, dst / rel, long_side, Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--long-side", type=int, default=480)
    parser.add_argument("--run", nargs=2, type=Path, metavar=("RUN", "RUN_DST"),
                        help="also shrink a `zsplg label` output folder")
    args = parser.parse_args()
    shrink_dataset(args.src, args.dst, args.long_side)
    if args.run:
        shrink_run(args.run[0], args.run[1], args.long_side)


if __name__ == "__main__":
    main()
