"""Accuracy of the training methods at the same iteration budget, over seeds.

Rows: supervised on the labelled subset, unimatch, enhanced (the default
policy, fixed before any run; other policies only when --policies names them),
and supervised on every training image at the same step budget ("full": not an
upper bound unless the budget lets it converge). Every row runs once per seed
(--seeds: model head initialisation, data order and augmentation) and reports
the mean and standard deviation of val mIoU; the claim is judged on the default
policy's mean, never on the best of several policies.

CamVid: 46 labelled images (benchmarks/splits.py), 321 unlabelled, val.txt.
Kvasir-SEG: 1/8 labelled, a fixed 20 % held out; its images are resized once to
--kvasir-side (originals reach 1920 px, which a CPU budget cannot afford) into a
cache folder.

Pseudo labels for `enhanced` come from a `zsplg label` output folder given by
--pseudo-labels (made with the best labeller available; see benchmarks/README.md).

    python benchmarks/semi_supervised.py --dataset camvid --iters 300 \
        --pseudo-labels /path/to/label-run --out /tmp/semi

Prints one JSON object: a row per method with each seed's val mIoU, their mean
and standard deviation, and wall seconds. Runs resume: a seed already trained to
--iters in OUT is read back, not trained again, so a long table can be built over
several invocations (an interrupted seed resumes from its checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import DATA, camvid_split, kvasir_split  # noqa: E402

from zsplg.choices import DEFAULT_TARGET_POLICY  # noqa: E402
from zsplg.data.run_folder import METRICS_FILE  # noqa: E402
from zsplg.train.config import TrainConfig  # noqa: E402
from zsplg.train.loop import train  # noqa: E402


def _write_list(path: Path, root: Path, lines: list[str], images_only: bool = False) -> Path:
    out = []
    for line in lines:
        image, label = line.split()
        out.append(str(root / image) if images_only else f"{root / image} {root / label}")
    path.write_text("\n".join(out) + "\n")
    return path


def _resized_kvasir(side: int, cache: Path) -> Path:
    """A copy of Kvasir-SEG with long side ``side`` (labels nearest-neighbour)."""
    src = DATA / "kvasir-seg"
    dst = cache / f"kvasir-{side}"
    done = dst / ".done"
    if done.exists():
        return dst
    for line in (src / "all.txt").read_text().split("\n"):
        if not line.strip():
            continue
        image_rel, label_rel = line.split()
        image = Image.open(src / image_rel).convert("RGB")
        scale = side / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        (dst / image_rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / label_rel).parent.mkdir(parents=True, exist_ok=True)
        image.resize(size, Image.BILINEAR).save((dst / image_rel).with_suffix(".jpg"), quality=95)
        label = Image.open(src / label_rel)
        label.resize(size, Image.NEAREST).save(dst / label_rel)
    for name in ("all.txt", "classes.txt"):
        text = (src / name).read_text()
        if name == "all.txt":
            text = "\n".join(
                f"{str(Path(i).with_suffix('.jpg'))} {lab}"
                for i, lab in (x.split() for x in text.split("\n") if x.strip())) + "\n"
        (dst / name).write_text(text)
    done.write_text("ok")
    return dst


def prepare(dataset: str, work: Path, kvasir_side: int) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    if dataset == "camvid":
        root, split = DATA / "camvid", camvid_split()
    else:
        root = _resized_kvasir(kvasir_side, work)
        split = kvasir_split(root)
    return {"root": root, "classes": root / "classes.txt",
            "labelled": _write_list(work / "labelled.txt", root, split["labelled"]),
            "unlabelled": _write_list(work / "unlabelled.txt", root, split["unlabelled"], True),
            "all_train": _write_list(work / "all_train.txt", root, split["all_train"]),
            "val": _write_list(work / "val.txt", root, split["val"])}


def run_seed(name: str, seed: int, files: dict[str, Path], out: Path,
             args: argparse.Namespace, **settings: object) -> dict:
    """One row at one seed; a finished run in OUT is read back instead of retrained."""
    folder = out / name / f"seed-{seed}"
    metrics_file = folder / METRICS_FILE
    if metrics_file.is_file():
        result = json.loads(metrics_file.read_text())
        if result.get("steps") == args.iters and result.get("miou") is not None:
            return {"seed": seed, "miou": round(result["miou"], 2), "seconds": None,
                    "reused": True}
    config = TrainConfig(classes=str(files["classes"]), out=str(folder),
                         val=str(files["val"]), backbone=args.backbone,
                         crop_size=args.crop, batch_size=args.batch_size, iters=args.iters,
                         head_channels=args.head_channels, lr=args.lr, workers=args.workers,
                         seed=seed, device=args.device, val_every=args.iters,
                         checkpoint_every=max(args.iters // 10, 1), log_every=10,
                         tensorboard=False, **settings)
    started = time.time()
    result = train(config)  # resumes from folder/checkpoints/latest.pt when one is there
    return {"seed": seed, "miou": round(result["miou"], 2),
            "seconds": round(time.time() - started, 1), "reused": False}


def run_row(name: str, files: dict[str, Path], out: Path, args: argparse.Namespace,
            **settings: object) -> dict:
    seeds = [run_seed(name, seed, files, out, args, **settings) for seed in args.seeds]
    values = np.array([s["miou"] for s in seeds], dtype=float)
    row = {"row": name, "mean": round(float(values.mean()), 2),
           "sd": round(float(values.std(ddof=1)), 2) if len(values) > 1 else None,
           "seeds": seeds}
    print(json.dumps({"progress": row}), file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("camvid", "kvasir"), default="camvid")
    parser.add_argument("--rows", default="supervised,unimatch,enhanced,full",
                        help="comma list of supervised, unimatch, enhanced, full")
    parser.add_argument("--policies", default=DEFAULT_TARGET_POLICY,
                        help="enhanced policies to run (default: the default policy only)")
    parser.add_argument("--pseudo-labels", type=Path, default=None)
    parser.add_argument("--pseudo-min-confidence", type=float, default=0.0,
                        help="enhanced rows: pseudo-label pixels below it go to the teacher")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--head-channels", type=int, default=128,
                        help="decoder width (256 in the reference; 128 fits a CPU budget)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")],
                        default=[0, 1, 2], help="comma list of seeds, one run per row each")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (AMP on GPU)")
    parser.add_argument("--kvasir-side", type=int, default=320)
    parser.add_argument("--out", type=Path, default=Path("semi-supervised-bench"),
                        help="keeps every run: the same command again resumes the table")
    args = parser.parse_args()
    rows_wanted = args.rows.split(",")
    if "enhanced" in rows_wanted and args.pseudo_labels is None:
        parser.error("the enhanced row needs --pseudo-labels (a `zsplg label` output folder)")

    files = prepare(args.dataset, args.out / "lists", args.kvasir_side)
    rows = []
    for row in rows_wanted:
        if row == "supervised":
            rows.append(run_row("supervised", files, args.out, args, method="supervised",
                                labelled=str(files["labelled"])))
        elif row == "full":
            rows.append(run_row("supervised-all", files, args.out, args, method="supervised",
                                labelled=str(files["all_train"])))
        elif row == "unimatch":
            rows.append(run_row("unimatch", files, args.out, args, method="unimatch",
                                labelled=str(files["labelled"]),
                                unlabelled=str(files["unlabelled"])))
        elif row == "enhanced":
            floor = args.pseudo_min_confidence
            for policy in args.policies.split(","):
                name = f"enhanced-{policy}" + (f"-min-confidence-{floor:g}" if floor else "")
                rows.append(run_row(name, files, args.out, args,
                                    method="enhanced", policy=policy,
                                    labelled=str(files["labelled"]),
                                    unlabelled=str(files["unlabelled"]),
                                    pseudo_labels=str(args.pseudo_labels),
                                    pseudo_min_confidence=floor))
        else:
            parser.error(f"unknown row {row!r}")
    by_name = {r["row"]: r for r in rows}
    summary = {"dataset": args.dataset, "iters": args.iters, "batch_size": args.batch_size,
               "crop": args.crop, "backbone": args.backbone, "lr": args.lr,
               "head_channels": args.head_channels, "seeds": args.seeds,
               "labelled_images": len(files["labelled"].read_text().split()) // 2,
               "rows": rows}
    default = by_name.get(f"enhanced-{DEFAULT_TARGET_POLICY}")
    if default and "unimatch" in by_name and "supervised" in by_name:
        unimatch, supervised = by_name["unimatch"], by_name["supervised"]
        summary["claim_default_enhanced_ge_unimatch"] = default["mean"] >= unimatch["mean"]
        summary["claim_unimatch_gt_supervised"] = unimatch["mean"] > supervised["mean"]
        spread = default["sd"]
        summary["claim_default_enhanced_ahead_by_more_than_one_sd"] = (
            spread is not None and default["mean"] - unimatch["mean"] > spread)
    print(json.dumps(summary, indent=2, default=lambda x: None if x is None
                     or (isinstance(x, float) and np.isnan(x)) else x))


if __name__ == "__main__":
    main()
