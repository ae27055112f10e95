"""Accuracy of the training methods at the same iteration budget, over seeds.

Rows: supervised on the labelled subset, unimatch, enhanced (the default
policy, fixed before any run; other policies only when --policies names them),
and supervised on every training image at the same step budget ("full": not an
upper bound unless the budget lets it converge). Every row runs once per seed
(--seeds: model head initialisation, data order and augmentation) and reports
the mean and standard deviation of val mIoU; the claim is judged on the default
policy's mean, never on the best of several policies.

CamVid: 46 labelled images (benchmarks/splits.py), 321 unlabelled, val.txt.
voc2012-mini (--dataset voc, the paper's dataset): 1/8 of train.txt labelled
(splits.voc_split: 38), the other 273 unlabelled, val.txt (161).
Kvasir-SEG: 1/8 labelled, a fixed 20 % held out; its images are resized once to
--kvasir-side (originals reach 1920 px, which a CPU budget cannot afford) into a
cache folder.

Pseudo labels for `enhanced` come from a `zsplg label` output folder given by
--pseudo-labels (made with the best labeller available; see benchmarks/README.md).

    python benchmarks/semi_supervised.py --dataset camvid --iters 300 \
        --pseudo-labels /path/to/label-run --out /tmp/semi
    python benchmarks/semi_supervised.py --smoke      # CI: the whole path in about a minute

--curve-every N also validates every N steps and reports each seed's [step, mIoU]
curve (to see whether a row has stopped rising at the budget); the row's figure is
still the last validation, never the best one.

Prints one JSON object on one line, the only thing on stdout (progress and an
indented copy go to stderr): a row per method with each seed's val mIoU, their
mean and standard deviation, and wall seconds. Runs resume: a seed already trained
to --iters in OUT is read back, not trained again, so a long table can be built
over several invocations (an interrupted seed resumes from its checkpoint).

--data-root points at a copy of the dataset folder elsewhere (a machine without
../shared, e.g. a GPU host given a copy): the same layout, and the split functions
read its train.txt / val.txt (all.txt), so the copy must keep those files whole for
the split to be the same lines; ``split_digest`` in the output identifies the
labelled subset so tables made on different machines can be checked to agree. Every
listed file must be present (checked before any training).

--device cuda trains on the GPU with the trainer's mixed precision (--amp auto:
bf16 autocast on CUDA, fp32 on CPU).

--smoke is self-contained: 4 labelled, 4 unlabelled and 4 val CamVid images (the
first of each part of the real split, copied at a 240 px long side), pseudo labels
for the 4 unlabelled made by the real `zsplg label` command in a subprocess
(superpixel masks, ConSE, CPU), then
supervised, unimatch and enhanced for 2 iterations at crop 64, batch 2, one seed,
in a temporary folder unless --out is given. Without the data it prints
{"skipped": ...} and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from splits import DATA, camvid_split, kvasir_split, voc_split  # noqa: E402

from zsplg.choices import DEFAULT_TARGET_POLICY  # noqa: E402
from zsplg.data.run_folder import CONFIG_FILE, HISTORY_FILE, METRICS_FILE  # noqa: E402
from zsplg.runtime.device import DeviceError, resolve_device  # noqa: E402
from zsplg.runtime.progress import Level, Reporter, Task  # noqa: E402
from zsplg.train.config import TrainConfig  # noqa: E402
from zsplg.train.loop import train  # noqa: E402

DATASET_FOLDERS = {"camvid": "camvid", "kvasir": "kvasir-seg", "voc": "voc2012-mini"}
SMOKE_IMAGES = 4
SMOKE_SIDE = 240  # CamVid's 960x720 at a quarter: whole-image validation costs 1/16
SMOKE_ROWS = "supervised,unimatch,enhanced"


class StderrReporter(Reporter):
    """The trainer's log lines and a line every tenth of a run, on stderr: stdout is
    kept for the JSON result alone."""

    def log(self, message: str, level: Level = "info") -> None:
        """One line, prefixed by its level when it is a warning."""
        prefix = "warning: " if level == "warning" else ""
        print(f"{prefix}{message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "img") -> Iterator[Task]:
        """A task that prints its count at every tenth of ``total``."""
        yield _TenthsTask(description, total, unit)


class _TenthsTask(Task):
    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done, self.started, self.printed = 0, time.time(), -1

    def advance(self, steps: int = 1) -> None:
        self.update(completed=self.done + steps)

    def update(self, completed: int | None = None, total: int | None = None) -> None:
        self.total = total if total is not None else self.total
        if completed is None:
            return
        self.done = completed
        every = max((self.total or 10) // 10, 1)
        if completed // every > self.printed or completed == self.total:
            self.printed = completed // every
            print(f"{self.description}: {completed}/{self.total} {self.unit} "
                  f"({time.time() - self.started:.0f} s)", file=sys.stderr, flush=True)


def _write_list(path: Path, root: Path, lines: list[str], images_only: bool = False) -> Path:
    out = []
    for line in lines:
        image, label = line.split()
        out.append(str(root / image) if images_only else f"{root / image} {root / label}")
    path.write_text("\n".join(out) + "\n")
    return path


def _resized_kvasir(side: int, cache: Path, src: Path) -> Path:
    """A copy of Kvasir-SEG (from ``src``) with long side ``side`` (labels
    nearest-neighbour)."""
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


def check_files(root: Path, split: dict[str, list[str]]) -> None:
    """Every image and label the split lists exists under ``root``: a partial copy of
    the dataset fails here, naming a missing file, not minutes into a run."""
    fields = sorted({field for lines in split.values() for line in lines
                     for field in line.split()})
    missing = [root / field for field in fields if not (root / field).is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} file(s) listed in {root}'s split are missing, "
                         f"e.g. {missing[0]}; a copy given to --data-root needs every file "
                         "its lists name")


def split_digest(lines: list[str]) -> str:
    """A short fingerprint of the labelled lines, to compare runs on different copies."""
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:12]


def prepare(dataset: str, work: Path, kvasir_side: int,
            data_root: Path) -> tuple[dict[str, Path], str]:
    """Pair-lists of the benchmark split (absolute paths) in ``work``, read from
    ``data_root``, and the labelled subset's fingerprint."""
    work.mkdir(parents=True, exist_ok=True)
    if dataset == "camvid":
        root, split = data_root, camvid_split(data_root)
    elif dataset == "voc":
        root, split = data_root, voc_split(data_root)
    else:
        root = _resized_kvasir(kvasir_side, work, data_root)
        split = kvasir_split(root)
    check_files(root, split)
    return write_split(root, split, work), split_digest(split["labelled"])


def write_split(root: Path, split: dict[str, list[str]], work: Path) -> dict[str, Path]:
    """The list files the rows train and validate on (paths absolute)."""
    work.mkdir(parents=True, exist_ok=True)
    return {"root": root, "classes": root / "classes.txt",
            "labelled": _write_list(work / "labelled.txt", root, split["labelled"]),
            "unlabelled": _write_list(work / "unlabelled.txt", root, split["unlabelled"], True),
            "all_train": _write_list(work / "all_train.txt", root, split["all_train"]),
            "val": _write_list(work / "val.txt", root, split["val"])}


def resolved(folder: Path) -> dict:
    """What the trainer resolved for a run (its config.yaml): the device, the AMP dtype
    and how many unlabelled images found a pseudo label, so a run elsewhere (a GPU, a
    copied dataset) shows it ran as intended."""
    try:
        settings = yaml.safe_load((folder / CONFIG_FILE).read_text()).get("_resolved", {})
    except (OSError, AttributeError, yaml.YAMLError):
        return {}
    keys = ("device", "amp_dtype", "unlabelled_images", "pseudo_labels_found",
            "pseudo_reliability")
    return {key: settings.get(key) for key in keys}


def curve(folder: Path) -> list[list[float]]:
    """[step, val mIoU] for every validation the run recorded (one per --curve-every
    steps; only the last one is the row's figure, never the best of them)."""
    points = []
    try:
        lines = (folder / HISTORY_FILE).read_text().splitlines()
    except OSError:
        return points
    for line in lines:
        record = json.loads(line)
        if "val" in record and record["val"].get("miou") is not None:
            points.append([record["iter"], round(record["val"]["miou"], 2)])
    return points


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; none for a single value), rounded
    as the tables print them."""
    array = np.asarray(values, dtype=float)
    sd = round(float(array.std(ddof=1)), 2) if len(array) > 1 else None
    return round(float(array.mean()), 2), sd


def curve_mean_sd(curves: list[list[list[float]]]) -> list[list[float | None]]:
    """[step, mean, sd] over seeds at each step that every seed validated: the row's
    curve, so a reader sees whether the rows' order holds along the run or only at
    its last step."""
    if not curves or not all(curves):
        return []
    by_seed = [dict((int(step), value) for step, value in points) for points in curves]
    common = sorted(set.intersection(*(set(points) for points in by_seed)))
    return [[step, *mean_sd([points[step] for points in by_seed])] for step in common]


def paired_difference(row: dict, reference: dict) -> dict | None:
    """``row`` minus ``reference`` seed by seed, with mean and sd: the seeds share data
    order and augmentation, so the paired spread is the fair yardstick for a gap
    smaller than either row's own spread."""
    theirs = {s["seed"]: s["miou"] for s in reference["seeds"]}
    differences = {s["seed"]: round(s["miou"] - theirs[s["seed"]], 2)
                   for s in row["seeds"] if s["seed"] in theirs}
    if not differences:
        return None
    mean, sd = mean_sd(list(differences.values()))
    return {"per_seed": differences, "mean": mean, "sd": sd}


def run_seed(name: str, seed: int, files: dict[str, Path], out: Path,
             args: argparse.Namespace, **settings: object) -> dict:
    """One row at one seed; a finished run in OUT is read back instead of retrained."""
    folder = out / name / f"seed-{seed}"
    metrics_file = folder / METRICS_FILE
    if metrics_file.is_file():
        result = json.loads(metrics_file.read_text())
        if result.get("steps") == args.iters and result.get("miou") is not None:
            return {"seed": seed, "miou": round(result["miou"], 2), "seconds": None,
                    "train_seconds": result.get("seconds_this_session"), "reused": True,
                    "curve": curve(folder), **resolved(folder)}
    config = TrainConfig(classes=str(files["classes"]), out=str(folder),
                         val=str(files["val"]), backbone=args.backbone,
                         crop_size=args.crop, batch_size=args.batch_size, iters=args.iters,
                         head_channels=args.head_channels, lr=args.lr, workers=args.workers,
                         seed=seed, device=args.device, amp=args.amp,
                         val_every=args.curve_every or args.iters,
                         checkpoint_every=max(args.iters // 10, 1), log_every=10,
                         tensorboard=False, **settings)
    print(f"{name} seed {seed}: training in {folder}", file=sys.stderr, flush=True)
    started = time.time()
    # resumes from folder/checkpoints/latest.pt when one is there; stray prints from
    # libraries go to stderr, as stdout carries only the result
    with contextlib.redirect_stdout(sys.stderr):
        result = train(config, StderrReporter())
    # seconds: wall time of this call (model build, data, training, validation);
    # train_seconds: the training loop alone (this session's part when resumed)
    return {"seed": seed, "miou": round(result["miou"], 2),
            "seconds": round(time.time() - started, 1),
            "train_seconds": result.get("seconds_this_session"), "reused": False,
            "curve": curve(folder), **resolved(folder)}


def run_row(name: str, files: dict[str, Path], out: Path, args: argparse.Namespace,
            **settings: object) -> dict:
    """Every seed of one row; ``seconds`` is the row's wall time in this invocation
    (reused seeds cost nothing)."""
    started = time.time()
    seeds = [run_seed(name, seed, files, out, args, **settings) for seed in args.seeds]
    mean, sd = mean_sd([s["miou"] for s in seeds])
    row = {"row": name, "mean": mean, "sd": sd,
           "seconds": round(time.time() - started, 1), "seeds": seeds,
           "curve_mean_sd": curve_mean_sd([s["curve"] for s in seeds])}
    print(json.dumps({"progress": row}), file=sys.stderr, flush=True)
    return row


def smoke_split(root: Path) -> dict[str, list[str]]:
    """The first SMOKE_IMAGES of each part of the real CamVid split: small, but the
    same files and the same code path as the full benchmark."""
    split = camvid_split(root)
    return {part: lines[:SMOKE_IMAGES] for part, lines in split.items()}


def resized_copy(root: Path, lines: list[str], dst: Path, side: int) -> Path:
    """The files of ``lines`` at long side ``side`` under ``dst``, in the dataset's
    layout (images bilinear, labels nearest-neighbour), with its classes.txt and its
    train.txt / val.txt unchanged, so the split functions give the same lines.

    The smoke uses it (full-size whole-image validation alone took most of a minute
    per row on a busy 2-core machine; the code path is the same at any size), and it
    makes a smaller copy for --data-root on a machine without the data. Pseudo labels
    must then come from the copy (or be resized alike): the trainer refuses a pseudo
    label whose size differs from its image.
    """
    for line in sorted(set(lines)):
        for field, method in zip(line.split(), (Image.BILINEAR, Image.NEAREST),
                                 strict=True):
            image = Image.open(root / field)
            scale = side / max(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            (dst / field).parent.mkdir(parents=True, exist_ok=True)
            options = {"quality": 95} if Path(field).suffix.lower() in (".jpg", ".jpeg") else {}
            image.resize(size, method).save(dst / field, **options)
    for name in ("classes.txt", "train.txt", "val.txt"):
        (dst / name).write_text((root / name).read_text())
    return dst


def make_pseudo_labels(files: dict[str, Path], out: Path, threads: int | None) -> Path:
    """Pseudo labels for the unlabelled list by the real command line, in a subprocess
    (what a user runs before `enhanced`); its output goes to stderr. ``threads`` caps
    its torch threads (OMP_NUM_THREADS), as --threads does here."""
    command = [sys.executable, "-m", "zsplg", "label", "--list", str(files["unlabelled"]),
               "--classes", str(files["classes"]), "--out", str(out), "--masks", "superpixel",
               "--vl", "conse", "--max-side", "256", "--device", "cpu"]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(command, check=True, stdout=sys.stderr, env=env)
    return out


def run_rows(rows_wanted: list[str], files: dict[str, Path], args: argparse.Namespace,
             parser: argparse.ArgumentParser) -> list[dict]:
    """Each requested row over every seed, in the order asked."""
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
                                    pseudo_min_confidence=floor,
                                    pseudo_reliability=(None if args.pseudo_reliability is None
                                                        else str(args.pseudo_reliability))))
        else:
            parser.error(f"unknown row {row!r}")
    return rows


def summarise(args: argparse.Namespace, files: dict[str, Path], digest: str,
              rows: list[dict], seconds: float) -> dict:
    """The result object: settings, rows, and the claims judged on the default policy."""
    by_name = {r["row"]: r for r in rows}
    summary = {"dataset": args.dataset, "data_root": str(files["root"]),
               "split_digest": digest, "iters": args.iters, "batch_size": args.batch_size,
               "crop": args.crop, "backbone": args.backbone, "lr": args.lr,
               "curve_every": args.curve_every,
               "head_channels": args.head_channels, "seeds": args.seeds,
               "device": args.resolved_device, "amp": args.amp,
               "threads": torch.get_num_threads(),
               "labelled_images": len(files["labelled"].read_text().split()) // 2,
               "unlabelled_images": len(files["unlabelled"].read_text().split()),
               "val_images": len(files["val"].read_text().split()) // 2,
               "rows": rows, "seconds": round(seconds, 1)}
    if args.smoke:
        summary["smoke"] = True
    default = by_name.get(f"enhanced-{DEFAULT_TARGET_POLICY}")
    if default and "unimatch" in by_name and "supervised" in by_name:
        unimatch, supervised = by_name["unimatch"], by_name["supervised"]
        summary["claim_default_enhanced_ge_unimatch"] = default["mean"] >= unimatch["mean"]
        summary["claim_unimatch_gt_supervised"] = unimatch["mean"] > supervised["mean"]
        spread = default["sd"]
        summary["claim_default_enhanced_ahead_by_more_than_one_sd"] = (
            spread is not None and default["mean"] - unimatch["mean"] > spread)
        summary["paired_default_enhanced_minus_unimatch"] = paired_difference(default,
                                                                              unimatch)
    return summary


def _finite(value: object) -> object:
    """NaN (a class never seen) as null: JSON has no NaN."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main() -> None:
    """Parse the options, prepare the split (or the smoke subset), run the rows, and
    print the result as the one line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=tuple(DATASET_FOLDERS), default="camvid")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="the dataset folder (default: ../shared/data/camvid or "
                             "kvasir-seg beside the repository); a copy must keep its lists")
    parser.add_argument("--rows", default=None,
                        help="comma list of supervised, unimatch, enhanced, full (default: "
                             f"all four; {SMOKE_ROWS} with --smoke)")
    parser.add_argument("--policies", default=DEFAULT_TARGET_POLICY,
                        help="enhanced policies to run (default: the default policy only)")
    parser.add_argument("--pseudo-labels", type=Path, default=None)
    parser.add_argument("--pseudo-reliability", type=Path, default=None,
                        help="calibration file with the reliability table (policy "
                             "reliability; default: the label run's calibration.json)")
    parser.add_argument("--pseudo-min-confidence", type=float, default=0.0,
                        help="enhanced rows: pseudo-label pixels below it go to the teacher")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--curve-every", type=int, default=None,
                        help="also validate every N steps and report each seed's curve "
                             "(default: once, at the end); the figure is always the last")
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
    parser.add_argument("--amp", default="auto", choices=("auto", "on", "off"),
                        help="the trainer's mixed precision: auto = bf16 autocast on CUDA, "
                             "fp32 on CPU")
    parser.add_argument("--kvasir-side", type=int, default=320)
    parser.add_argument("--out", type=Path, default=None,
                        help="keeps every run: the same command again resumes the table "
                             "(default: semi-supervised-bench; a temporary folder with --smoke)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 with --smoke)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write OUT/lists (labelled.txt, unlabelled.txt, val.txt; Kvasir's "
                             "resized copy) for `zsplg label`, print their paths, and stop")
    parser.add_argument("--smoke", action="store_true",
                        help="4+4+4 CamVid images, pseudo labels by `zsplg label`, 2 "
                             "iterations a row at crop 64, one seed: checks the whole path")
    args = parser.parse_args()
    if args.smoke and args.threads is None:
        # Tiny steps gain nothing from a second thread, and on a shared CI machine two
        # spinning threads made the smoke 5 to 10 times slower (measured: 197 s against
        # 47 s at load 6 on 2 cores).
        args.threads = 1
    if args.curve_every is not None and args.curve_every < 1:
        parser.error("--curve-every must be a positive number of steps")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:  # one line now, not a traceback inside the first row
        args.resolved_device = resolve_device(args.device)
    except DeviceError as error:
        parser.error(str(error))
    # absolute, so the list files work from any folder
    args.data_root = (args.data_root or DATA / DATASET_FOLDERS[args.dataset]).resolve()
    started = time.time()
    if args.smoke:
        if args.dataset != "camvid":
            parser.error("--smoke runs on CamVid only")
        if args.pseudo_labels is not None:
            parser.error("--smoke makes its own pseudo labels (for its resized images); "
                         "drop --pseudo-labels")
        if not (args.data_root / "train.txt").is_file():
            print(json.dumps({"skipped": f"no CamVid at {args.data_root}"}))
            return
        args.rows = args.rows or SMOKE_ROWS
        args.iters, args.crop, args.batch_size, args.seeds, args.workers = 2, 64, 2, [0], 0
        with contextlib.ExitStack() as stack:
            if args.out is None:
                args.out = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="semi-smoke-")))
            split = smoke_split(args.data_root)
            check_files(args.data_root, split)
            picked = [line for lines in split.values() for line in lines]
            root = resized_copy(args.data_root, picked, args.out / "camvid-small",
                                SMOKE_SIDE)
            files = write_split(root, split, args.out / "lists")
            if "enhanced" in args.rows.split(","):
                args.pseudo_labels = make_pseudo_labels(files, args.out / "pseudo",
                                                        args.threads)
            rows = run_rows(args.rows.split(","), files, args, parser)
            summary = summarise(args, files, split_digest(split["labelled"]), rows,
                                time.time() - started)
    else:
        args.rows = args.rows or "supervised,unimatch,enhanced,full"
        args.out = args.out or Path("semi-supervised-bench")
        if args.prepare_only:
            if not args.data_root.is_dir():
                parser.error(f"--data-root: no folder {args.data_root}")
            files, digest = prepare(args.dataset, args.out / "lists", args.kvasir_side,
                                    args.data_root)
            print(json.dumps({"split_digest": digest,
                              **{key: str(value) for key, value in files.items()}}))
            return
        if "enhanced" in args.rows.split(",") and args.pseudo_labels is None:
            parser.error("the enhanced row needs --pseudo-labels (a `zsplg label` output folder)")
        if not args.data_root.is_dir():
            parser.error(f"--data-root: no folder {args.data_root}")
        files, digest = prepare(args.dataset, args.out / "lists", args.kvasir_side,
                                args.data_root)
        rows = run_rows(args.rows.split(","), files, args, parser)
        summary = summarise(args, files, digest, rows, time.time() - started)
    summary = _finite(summary)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
