"""Choose the few-shot head's L2 and example weighting from the labelled images alone.

For each dataset's labelled subset (benchmarks/splits.py: CamVid's 46, Kvasir-SEG's
1/8, voc2012-mini's 1/8 of train), every (L2, weighting) pair is scored by the
calibration's own cross-validation in few-shot mode, inside those labelled images:
no unlabelled or val image's ground truth is read. The choice is the pair with the
best mean cross-validated mIoU over the datasets.

Backends are the offline ones (superpixel masks, ConSE EfficientNet-Lite0 features),
at --max-side (default 512, to fit a CPU budget). Reductions are cached in
--cache-dir, so a re-run only repeats the cross-validation.

    python benchmarks/fewshot_choice.py --cache-dir /tmp/zsplg-fewshot

Prints one JSON object: per dataset and pair, the cross-validated mIoU; the chosen pair.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import DATA, camvid_split, kvasir_split, voc_split  # noqa: E402

import zsplg.calibration.search as search  # noqa: E402
from zsplg.calibration.labelled_set import LabelledSet, reduce_sample  # noqa: E402
from zsplg.data.classes import load_class_spec  # noqa: E402
from zsplg.data.sources import Sample  # noqa: E402
from zsplg.labeling.labeller import Labeller  # noqa: E402

SPLITS = {"camvid": (DATA / "camvid", camvid_split),
          "kvasir": (DATA / "kvasir-seg", kvasir_split),
          "voc2012-mini": (DATA / "voc2012-mini", voc_split)}
L2S = (1e-2, 5e-2, 1e-1, 3e-1)
WEIGHTINGS = ("area", "sqrt-area")


def labelled_set(name: str, max_side: int, cache: Path, log) -> tuple[LabelledSet, object,
                                                                      object]:
    root, split = SPLITS[name]
    spec = load_class_spec(root / "classes.txt")
    labeller = Labeller.from_names(spec, "superpixel", "conse", device="cpu",
                                   max_side=max_side)
    samples = []
    for line in split(root)["labelled"]:
        image, label = line.split()
        samples.append(Sample(root / image, root / label, Path(image).with_suffix("").as_posix()))
    started = time.time()
    images = [reduce_sample(s, labeller.mask_generator, labeller.uncalibrated_model,
                            spec.num_classes, spec.ignore_index, max_side, cache / name)
              for s in samples]
    log(f"{name}: {len(images)} labelled images reduced in {time.time() - started:.0f} s")
    return LabelledSet(images, spec.num_classes), labeller.uncalibrated_model, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="camvid,kvasir,voc2012-mini")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=Path("fewshot-choice-cache"))
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    pairs = list(itertools.product(L2S, WEIGHTINGS))
    table: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    for name in args.datasets.split(","):
        if not SPLITS[name][0].is_dir():
            log(f"{name}: not found, skipped")
            continue
        lset, model, spec = labelled_set(name, args.max_side, args.cache_dir, log)
        table[name], sizes[name] = {}, len(lset)
        for l2, weighting in pairs:
            search.FEWSHOT_L2, search.FEWSHOT_WEIGHTING = l2, weighting
            calibration = search.calibrate(lset, model, spec, mode="few-shot", folds=args.folds)
            table[name][f"{l2:g}/{weighting}"] = calibration.report["after"]["miou"]
            log(f"{name} L2 {l2:g} {weighting}: {table[name][f'{l2:g}/{weighting}']:.2f}")
    means = {key: round(float(np.mean([table[d][key] for d in table])), 2)
             for key in (f"{l2:g}/{w}" for l2, w in pairs)} if table else {}
    chosen = max(means, key=means.get) if means else None
    print(json.dumps({"max_side": args.max_side, "folds": args.folds,
                      "labelled_images": sizes, "cv_miou": table,
                      "mean_over_datasets": means, "chosen": chosen}))


if __name__ == "__main__":
    main()
