"""Choose calibration defaults from the labelled images alone.

--choose fewshot (default): the few-shot head's L2 and example weighting.
--choose offsets: the class-offset grid (none, +-2 or +-4 in log-score), in fused mode.
--choose unknown: what a mask no class matches becomes, for class lists without a
background class (`--unknown ignore` or `best-class`; CamVid only), in fused mode.

For each dataset's labelled subset (benchmarks/splits.py: CamVid's 46, Kvasir-SEG's
1/8, voc2012-mini's 1/8 of train), every (L2, weighting) pair is scored by the
calibration's own cross-validation in few-shot mode, inside those labelled images:
no unlabelled or val image's ground truth is read. The choice is the pair with the
best mean cross-validated mIoU over the datasets.

Backends are the offline ones (superpixel masks, ConSE EfficientNet-Lite0 features),
at --max-side (default 512, to fit a CPU budget). Reductions are cached in
--cache-dir, so a re-run only repeats the cross-validation.

    python benchmarks/fewshot_choice.py --cache-dir /tmp/zsplg-fewshot

--mode scores the candidates in another calibration mode (default: few-shot for
--choose fewshot, fused otherwise); `--choose unknown --mode zero-shot` is where
--unknown acts most, as no few-shot head names the masks.

Prints one JSON object: per dataset and candidate, the cross-validated mIoU
(cv_miou), the uncalibrated labeller's mIoU on the same images (uncalibrated_miou:
what `zsplg label` gives without labelled images); the candidate with the best mean
cross-validated mIoU over the datasets (the first listed on a tie).
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
OFFSET_GRIDS = {"none": (0.0,),
                "+-2": tuple(np.round(np.arange(-2.0, 2.01, 0.25), 2)),
                "+-4": tuple(np.round(np.arange(-4.0, 4.01, 0.25), 2))}
UNKNOWN = ("ignore", "best-class")


def candidates(choose: str) -> list[tuple[str, dict]]:
    """(name, what to set) per candidate of one choice."""
    if choose == "fewshot":
        return [(f"{l2:g}/{w}", {"FEWSHOT_L2": l2, "FEWSHOT_WEIGHTING": w})
                for l2, w in itertools.product(L2S, WEIGHTINGS)]
    if choose == "offsets":
        return [(name, {"OFFSET_GRID": grid}) for name, grid in OFFSET_GRIDS.items()]
    return [(name, {"unknown": name}) for name in UNKNOWN]


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
    parser.add_argument("--choose", choices=("fewshot", "offsets", "unknown"),
                        default="fewshot")
    parser.add_argument("--datasets", default=None,
                        help="comma list (default: camvid,kvasir,voc2012-mini; camvid "
                             "with --choose unknown, the only one without a background)")
    parser.add_argument("--mode", choices=("zero-shot", "few-shot", "fused"), default=None,
                        help="the calibration mode the candidates are scored in (default: "
                             "few-shot for --choose fewshot, else fused)")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=Path("fewshot-choice-cache"))
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    options = candidates(args.choose)
    mode = args.mode or ("few-shot" if args.choose == "fewshot" else "fused")
    if args.choose == "fewshot" and mode == "zero-shot":
        parser.error("--choose fewshot needs the few-shot head: --mode few-shot or fused")
    datasets = args.datasets or ("camvid" if args.choose == "unknown"
                                 else "camvid,kvasir,voc2012-mini")
    table: dict[str, dict[str, float]] = {}
    # the labeller before calibration (what `zsplg label` does without labelled images),
    # scored on the same labelled images: --unknown acts there too
    before: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    defaults = {key: getattr(search, key) for key in
                ("FEWSHOT_L2", "FEWSHOT_WEIGHTING", "OFFSET_GRID")}
    for name in datasets.split(","):
        if not SPLITS[name][0].is_dir():
            log(f"{name}: not found, skipped")
            continue
        lset, model, spec = labelled_set(name, args.max_side, args.cache_dir, log)
        table[name], before[name], sizes[name] = {}, {}, len(lset)
        for key, setting in options:
            for attribute, value in defaults.items():  # one change at a time
                setattr(search, attribute, value)
            unknown = setting.get("unknown", "ignore")
            for attribute, value in setting.items():
                if attribute != "unknown":
                    setattr(search, attribute, value)
            calibration = search.calibrate(lset, model, spec, mode=mode, folds=args.folds,
                                           unknown=unknown)
            table[name][key] = calibration.report["after"]["miou"]
            before[name][key] = calibration.report["before"]["miou"]
            log(f"{name} {args.choose} {key}: {table[name][key]:.2f}")
    means = {key: round(float(np.mean([table[d][key] for d in table])), 2)
             for key, _ in options} if table else {}
    chosen = max(means, key=means.get) if means else None
    print(json.dumps({"choose": args.choose, "mode": mode,
                      "max_side": args.max_side, "folds": args.folds,
                      "labelled_images": sizes, "cv_miou": table,
                      "uncalibrated_miou": before,
                      "mean_over_datasets": means, "chosen": chosen}))


if __name__ == "__main__":
    main()
