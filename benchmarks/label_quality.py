"""Pseudo-label quality: `zsplg label` + `zsplg eval` on a pair-list.

Prints one JSON object: mIoU, per-class IoU, coverage and seconds per image
for our labeller and, in the same process on the same images, for the naive
reference the issue names (dense ConSE: every feature cell classified on its
own, no masks, classic top-T embedding mixture with a fixed cosine threshold).

    python benchmarks/label_quality.py --list ../shared/data/voc2012-mini/val.txt
    python benchmarks/label_quality.py --list ../shared/data/camvid/val.txt --limit 20

Zero-shot: no label from the list is used except for scoring.

With labelled images (`--labelled LIST`, or `--camvid-labelled` for the fixed
46-image CamVid subset of benchmarks/splits.py) it adds the calibration rows:
zero-shot (uncalibrated), calibrated zero-shot, few-shot and few-shot +
zero-shot, each fitted on the labelled images only (`zsplg.calibration.search`) and
scored on --list, plus the cross-validated figures on the labelled images.
`--ceiling` adds calibrated zero-shot fitted on the evaluated images
themselves: the most the zero-shot knobs can give there, not an honest figure.

    python benchmarks/label_quality.py --list ../shared/data/voc2012-mini/val.txt \
        --labelled ../shared/data/voc2012-mini/train.txt --calibration-only
    python benchmarks/label_quality.py --list ../shared/data/camvid/val.txt \
        --camvid-labelled --calibration-only

The rows score the evaluated images through zsplg.calibration.labelled_set (masks and
features computed once per image, labels derived per atom); tests check that
this equals painting the labels with `zsplg label`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from zsplg.data.classes import load_class_spec
from zsplg.data.images import read_image
from zsplg.data.labels import read_label
from zsplg.data.sources import read_pair_list
from zsplg.evaluate import evaluate_folder
from zsplg.labeling.annotate import Annotator, AnnotatorConfig
from zsplg.labeling.labeller import text_prompts
from zsplg.labeling.run import LabelConfig, run_label
from zsplg.masks.base import MaskProposals
from zsplg.metrics import ConfusionMatrix, compute_metrics
from zsplg.vl.conse import ConSEBackend
from zsplg.vl.prompts import DEFAULT_TEMPLATES


def grid_proposals(height: int, width: int, rows: int, cols: int) -> MaskProposals:
    """One mask per feature cell: pooling then equals per-location classification."""
    row_of = np.minimum(np.arange(height) * rows // height, rows - 1)
    col_of = np.minimum(np.arange(width) * cols // width, cols - 1)
    cell = row_of[:, None] * cols + col_of[None, :]
    return MaskProposals.from_masks(cell[None] == np.arange(rows * cols)[:, None, None])


def naive_dense_conse(samples, spec, threshold: float) -> tuple[dict, float]:
    backend = ConSEBackend(scoring="mixture", top_t=10, label_style="lemmas")
    class_ids, prompts = text_prompts(spec, DEFAULT_TEMPLATES)
    annotator = Annotator(backend, backend.encode_text(prompts), class_ids, spec.background,
                          AnnotatorConfig(background_threshold=threshold, temperature=0.01))
    cm = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    started = time.perf_counter()
    for sample in samples:
        image = read_image(sample.image)
        features = backend.encode_image(image)
        proposals = grid_proposals(*image.shape[:2], *features.shape[1:])
        label = annotator.annotate(proposals, features).label
        cm.update(label, read_label(sample.label))
    seconds = (time.perf_counter() - started) / len(samples)
    return compute_metrics(cm, spec.names), seconds


def calibration_rows(args, spec, samples) -> dict:
    """Fit each mode on the labelled images, score it on the evaluated ones."""
    from zsplg.calibration.labelled_set import LabelledSet, reduce_sample
    from zsplg.calibration.search import calibrate_modes, score_calibration, uncalibrated
    from zsplg.masks import build_mask_generator
    from zsplg.vl import build_vl_model

    if args.camvid_labelled:
        from splits import camvid_labelled_subset

        root = Path(os.path.abspath(args.list.parent))  # as read_pair_list resolves entries
        labelled_list = root / "train.txt"
        chosen = set(camvid_labelled_subset(root))
        labelled = [s for s in read_pair_list(labelled_list)
                    if f"{s.image.relative_to(root)} {s.label.relative_to(root)}" in chosen]
    else:
        labelled = [s for s in read_pair_list(args.labelled) if s.label is not None]
    generator = build_mask_generator(args.masks)
    model = build_vl_model(args.vl)

    def reduce(items):
        started = time.perf_counter()
        images = [reduce_sample(s, generator, model, spec.num_classes, spec.ignore_index,
                                1024, args.cache_dir) for s in items]
        return LabelledSet(images, spec.num_classes), time.perf_counter() - started

    train, train_seconds = reduce(labelled)
    evaluated, eval_seconds = reduce(samples)
    started = time.perf_counter()
    fitted = calibrate_modes(train, model, spec, ("zero-shot", "few-shot", "fused"),
                             folds=args.folds, log=lambda m: print(m, file=sys.stderr))
    calibrate_seconds = time.perf_counter() - started
    report = next(iter(fitted.values())).report
    rows = {"zero-shot": uncalibrated(model, spec), "calibrated": fitted["zero-shot"],
            "few-shot": fitted["few-shot"], "few-shot+zero-shot": fitted["fused"]}
    if args.ceiling:
        # What the zero-shot knobs (threshold, temperature, templates, offsets) can reach
        # at best: fitted on the evaluated images themselves, so not a figure to expect.
        rows["calibrated-on-evaluated (ceiling)"] = calibrate_modes(
            evaluated, model, spec, ("zero-shot",), folds=args.folds,
            log=lambda m: print(m, file=sys.stderr))["zero-shot"]
    out = {}
    for name, calibration in rows.items():
        metrics = score_calibration(calibration, evaluated, model, spec)
        out[name] = {"miou": metrics["miou"], "coverage": metrics["coverage"],
                     "per_class_iou": metrics["per_class_iou"],
                     "top_confusions": metrics["top_confusions"][:3],
                     "settings": {"template_set": calibration.template_set,
                                  "threshold": calibration.background_threshold,
                                  "temperature": calibration.temperature,
                                  "fewshot_weight": calibration.fewshot_weight,
                                  "offsets": calibration.offsets}}
    return {"labelled_images": len(labelled), "evaluated_images": len(samples),
            "backends": {"masks": generator.config(), "vl": model.config()},
            "rows": out,
            "cross_validated_on_labelled": {
                "folds": report["folds"], "before": report["before"]["miou"],
                **{m: v["miou"] for m, v in report["modes"].items()}},
            "seconds": {"reduce_labelled": round(train_seconds, 1),
                        "reduce_evaluated": round(eval_seconds, 1),
                        "calibrate": round(calibrate_seconds, 1)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", required=True, type=Path, help="pair-list with labels")
    parser.add_argument("--classes", type=Path, help="class spec (default: classes.txt beside)")
    parser.add_argument("--limit", type=int, default=0, help="use the first N images only")
    parser.add_argument("--vl", default="auto")
    parser.add_argument("--masks", default="auto")
    parser.add_argument("--out", type=Path, help="keep outputs here (default: a temp folder)")
    parser.add_argument("--no-reference", action="store_true", help="skip the naive baseline")
    parser.add_argument("--reference-threshold", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--labelled", type=Path, help="labelled pair-list: add calibration rows")
    parser.add_argument("--camvid-labelled", action="store_true",
                        help="labelled = the fixed 46-image subset of CamVid train.txt")
    parser.add_argument("--calibration-only", action="store_true",
                        help="only the calibration rows (skip the plain label run)")
    parser.add_argument("--cache-dir", type=Path, help="keep reduced images here")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--ceiling", action="store_true",
                        help="add calibrated zero-shot fitted on the evaluated images themselves")
    args = parser.parse_args(argv)
    if args.calibration_only and not (args.labelled or args.camvid_labelled):
        parser.error("--calibration-only needs --labelled or --camvid-labelled")
    torch.set_num_threads(args.threads)

    classes = args.classes or args.list.parent / "classes.txt"
    spec = load_class_spec(classes)
    samples = [s for s in read_pair_list(args.list) if s.label is not None]
    if args.limit:
        samples = samples[: args.limit]
    if args.labelled or args.camvid_labelled:
        rows = calibration_rows(args, spec, samples)
        if args.calibration_only:
            print(json.dumps({"list": str(args.list), "threads": args.threads, **rows},
                             indent=2))
            return 0
    work = Path(tempfile.mkdtemp(prefix="zsplg-bench-")) if args.out is None else args.out
    subset = work / "pairs.txt"
    work.mkdir(parents=True, exist_ok=True)
    subset.write_text("".join(f"{s.image} {s.label}\n" for s in samples))

    info = run_label(LabelConfig(classes=str(classes), out=str(work / "pseudo"),
                                 pair_list=str(subset), masks=args.masks, vl=args.vl,
                                 overwrite=True))
    metrics, _, errors = evaluate_folder(work / "pseudo" / "labels",
                                         read_pair_list(subset), spec.names, spec.ignore_index)
    result = {
        "list": str(args.list),
        "images": len(samples),
        "threads": args.threads,
        "ours": {
            "backends": info["backends"],
            "miou": round(metrics["miou"], 2),
            "pixel_accuracy": round(metrics["pixel_accuracy"], 2),
            "coverage": round(metrics["coverage"], 2),
            "seconds_per_image": info["seconds_per_image"],
            "per_class_iou": {c["name"]: None if c["iou"] is None else round(c["iou"], 2)
                              for c in metrics["per_class"]},
            "failed": info["counts"]["failed"] + len(errors),
        },
    }
    if not args.no_reference:
        reference, seconds = naive_dense_conse(samples, spec, args.reference_threshold)
        result["reference_naive_dense_conse"] = {
            "miou": round(reference["miou"], 2),
            "coverage": round(reference["coverage"], 2),
            "seconds_per_image": round(seconds, 4),
            "threshold": args.reference_threshold,
        }
        result["miou_gain"] = round(result["ours"]["miou"] - reference["miou"], 2)
    if args.labelled or args.camvid_labelled:
        result["calibration"] = rows
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
