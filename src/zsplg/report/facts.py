"""What a run folder holds, gathered as plain data for the report page.

Reading a folder and drawing the page are kept apart so that the facts can be
checked (or shown by another front end) without parsing HTML, and the page can
change without touching how run folders are read. A missing or unreadable
piece becomes a note rather than an error: a half-finished run is still worth
looking at.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zsplg.data.classes import ClassSpec
from zsplg.data.errors import InputError
from zsplg.data.labels import read_label
from zsplg.data.run_folder import (
    CONFIDENCE,
    CONFIG_FILE,
    ERRORS_FILE,
    HISTORY_FILE,
    LABELS,
    METRICS_FILE,
    RUN_FILE,
    list_label_keys,
    match_samples,
    read_json,
    resolve_spec,
    source_samples,
)
from zsplg.data.sources import Sample, read_pair_list
from zsplg.metrics import ConfusionMatrix, compute_metrics, top_confusions
from zsplg.report.gallery import GalleryFacts, ImageScore, build_gallery, class_label
from zsplg.runtime.progress import Reporter, or_silent

TRAIN_FILES = (CONFIG_FILE, HISTORY_FILE, METRICS_FILE)
_NOT_EVAL = {RUN_FILE, METRICS_FILE}
_LISTED = 50  # failures, skipped images, problems: enough to see the pattern
_CONFIG_CHARS = 20000

Confusion = tuple[np.ndarray, list[str], list[str]]


@dataclass
class ReportOptions:
    """Where the images and ground truth are, and how much of them to show."""

    images: str | None = None
    pair_list: str | None = None
    gt_list: str | None = None
    classes: str | None = None
    gallery: int = 24
    thumb_size: int = 320


@dataclass(kw_only=True)
class ReportConfig(ReportOptions):
    """The settings of ``zsplg report``: the run folder, the page to write, and the options."""

    run_dir: str
    out: str | None = None

    def options(self) -> ReportOptions:
        return ReportOptions(**{f.name: getattr(self, f.name) for f in fields(ReportOptions)})


@dataclass
class MetricsFacts:
    """One set of scores: the metrics mapping as `zsplg eval` writes it, and its confusions."""

    title: str
    metrics: Mapping[str, Any]
    confusion: Confusion | None = None
    per_class: list[Mapping[str, Any]] = field(default_factory=list)
    top_confusions: list[Mapping[str, Any]] = field(default_factory=list)
    floors: list[dict[str, Any]] = field(default_factory=list)
    errors: list[Mapping[str, Any]] = field(default_factory=list)
    errors_total: int = 0

    @property
    def class_names(self) -> list[str]:
        return [str(r.get("name", r.get("id", "?"))) for r in self.per_class]

    @property
    def ious(self) -> list[float | None]:
        return [r.get("iou") for r in self.per_class]


@dataclass
class EvalFacts:
    """One eval JSON and what was found beside it."""

    name: str
    stem: str
    inputs: dict[str, Any]
    scores: MetricsFacts
    notes: list[str] = field(default_factory=list)


@dataclass
class Curve:
    """One chart's series: (name, iterations, values)."""

    title: str
    y_label: str
    series: list[tuple[str, list[float], list[float | None]]]
    css_class: str = "chart-lines"


@dataclass
class TrainFacts:
    """A training run: its history in curves, its final scores, its resolved config."""

    history_found: bool = False
    records: int = 0
    validations: int = 0
    last_iteration: int | None = None
    unreadable: int = 0
    curves: list[Curve] = field(default_factory=list)
    not_logged: list[str] = field(default_factory=list)
    final: MetricsFacts | None = None
    final_from: str | None = None  # METRICS_FILE, "validation" or None
    final_iteration: int | None = None
    metrics_found: bool = False
    config_text: str | None = None


@dataclass
class LabelFacts:
    """A label run: its record, what its labels contain, and how they score."""

    run_info: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    failures: list[Mapping[str, Any]] = field(default_factory=list)
    failures_total: int = 0
    label_count: int = 0
    image_count: int = 0
    class_shares: list[tuple[str, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    problems_total: int = 0
    computed: MetricsFacts | None = None
    gallery: GalleryFacts | None = None


@dataclass
class RunFacts:
    """Everything the page shows about one run folder (or one eval JSON)."""

    path: Path
    kinds: list[str]
    label: LabelFacts | None = None
    evals: list[EvalFacts] = field(default_factory=list)
    train: TrainFacts | None = None
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- scores


def read_confusion_csv(path: Path) -> Confusion:
    """The counts `zsplg eval` wrote: (matrix, row names, column names)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        columns = rows[0][1:]
        names = [r[0] for r in rows[1:] if r]
        matrix = np.array([[int(v) for v in r[1:]] for r in rows[1:] if r], dtype=np.int64)
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise InputError(path, f"unreadable confusion CSV ({exc})") from None
    if matrix.ndim != 2 or matrix.shape != (len(names), len(columns)):
        raise InputError(path, f"confusion CSV is not a {len(names)} x {len(columns)} table")
    return matrix, names, columns


def confusion_csv_for(metrics_path: Path) -> Path:
    """The CSV `zsplg eval` writes beside a metrics JSON: ``<stem>_confusion.csv``."""
    return metrics_path.with_name(f"{metrics_path.stem}_confusion.csv")


def metrics_facts(metrics: Mapping[str, Any], confusion: Confusion | None,
                  title: str) -> MetricsFacts:
    """The parts of a metrics mapping the page shows, with malformed entries dropped."""
    floors = []
    for floor in metrics.get("confidence_floors") or []:
        if isinstance(floor, Mapping):
            precisions = [c["precision"] for c in floor.get("per_class") or []
                          if isinstance(c, Mapping) and c.get("precision") is not None]
            floors.append({**floor, "lowest_precision": min(precisions, default=None)})
    errors = list(metrics.get("errors") or [])
    return MetricsFacts(
        title=title, metrics=metrics, confusion=confusion,
        per_class=[r for r in metrics.get("per_class") or [] if isinstance(r, Mapping)],
        top_confusions=[c for c in metrics.get("top_confusions") or []
                        if isinstance(c, Mapping)],
        floors=floors, errors=[e for e in errors[:_LISTED] if isinstance(e, Mapping)],
        errors_total=len(errors))


def is_metrics(data: Any) -> bool:
    """Whether data looks like `zsplg eval` output (it has a per-class list)."""
    return isinstance(data, dict) and isinstance(data.get("per_class"), list)


def eval_files(folder: Path) -> list[Path]:
    """JSON files in folder written by `zsplg eval` (they hold per-class metrics)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        if path.name in _NOT_EVAL:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if is_metrics(data):
            found.append(path)
    return found


def eval_facts(path: Path) -> EvalFacts:
    """One eval JSON and its confusion CSV."""
    metrics = read_json(path, "eval JSON")
    if not is_metrics(metrics):
        raise InputError(path, "not a `zsplg eval` JSON (no 'per_class' list)")
    csv_path = confusion_csv_for(path)
    confusion, notes = None, []
    if csv_path.is_file():
        try:
            confusion = read_confusion_csv(csv_path)
        except InputError as exc:
            notes.append(str(exc))
    else:
        notes.append(f"{csv_path.name} not found: no confusion matrix")
    inputs = {k: v for k, v in (metrics.get("inputs") or {}).items() if k != "classes"}
    return EvalFacts(name=path.name, stem=path.stem, inputs=inputs,
                     scores=metrics_facts(metrics, confusion, path.stem), notes=notes)


# --------------------------------------------------------------------------- train runs


def read_history(path: Path) -> tuple[list[dict[str, Any]], int]:
    """history.jsonl records, and how many lines were unreadable (skipped, counted)."""
    records, bad = [], 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read training history ({exc})") from None
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("iter"), int | float):
            records.append(record)
        else:
            bad += 1
    return records, bad


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float | None]]:
    xs: list[float] = []
    ys: list[float | None] = []
    for r in records:
        value = r.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            xs.append(float(r["iter"]))
            ys.append(float(value))
    return xs, ys


def _curves(steps: list[dict[str, Any]], vals: list[dict[str, Any]]
            ) -> tuple[list[Curve], list[str]]:
    """Charts with at least one value, and the names of the essential ones with none.

    Learning rate and mask ratio are only drawn when logged (mask ratio exists
    for semi-supervised methods only); a missing loss or validation is worth
    saying, since it is what the reader came for.
    """
    curves, not_logged = [], []
    losses = [(key, *_series(steps, key)) for key in ("loss", "loss_x", "loss_u")]
    losses = [s for s in losses if s[1]]
    if losses:
        curves.append(Curve("Training loss", "loss", losses))
    else:
        not_logged.append("training loss")
    val_points = [(float(r["iter"]), r["val"].get("miou")) for r in vals]
    if any(isinstance(y, int | float) for _, y in val_points):
        curves.append(Curve("Validation mIoU", "mIoU (%)",
                            [("val mIoU", [x for x, _ in val_points],
                              [y if isinstance(y, int | float) else None
                               for _, y in val_points])],
                            css_class="chart-lines chart-val"))
    else:
        not_logged.append("validation mIoU")
    for key, title in (("lr", "Learning rate"), ("mask_ratio", "Mask ratio")):
        xs, ys = _series(steps, key)
        if xs:
            curves.append(Curve(title, key, [(key, xs, ys)]))
    return curves, not_logged


def train_facts(folder: Path) -> TrainFacts:
    """Curves from history.jsonl, final scores from metrics.json, the resolved config."""
    facts = TrainFacts()
    history = folder / HISTORY_FILE
    last_val: dict[str, Any] | None = None
    if history.is_file():
        records, facts.unreadable = read_history(history)
        steps = [r for r in records if "val" not in r]
        vals = [r for r in records if isinstance(r.get("val"), dict)]
        facts.history_found = True
        facts.records, facts.validations = len(steps), len(vals)
        facts.last_iteration = max((int(r["iter"]) for r in records), default=None)
        facts.curves, facts.not_logged = _curves(steps, vals)
        last_val = vals[-1] if vals else None
    metrics_path = folder / METRICS_FILE
    if metrics_path.is_file():
        facts.metrics_found = True
        metrics = read_json(metrics_path, "final metrics")
        if is_metrics(metrics):
            csv_path = confusion_csv_for(metrics_path)
            confusion = read_confusion_csv(csv_path) if csv_path.is_file() else None
            facts.final = metrics_facts(metrics, confusion, "final")
            facts.final_from = METRICS_FILE
    elif last_val is not None and is_metrics(last_val["val"]):
        facts.final = metrics_facts(last_val["val"], None, "latest validation")
        facts.final_from = "validation"
        facts.final_iteration = int(last_val["iter"])
    config = folder / CONFIG_FILE
    if config.is_file():
        facts.config_text = config.read_text(encoding="utf-8", errors="replace")[:_CONFIG_CHARS]
    return facts


# --------------------------------------------------------------------------- label runs


def _gt_samples(options: ReportOptions, images: list[Sample]) -> list[Sample]:
    if options.gt_list is not None:
        return [s for s in read_pair_list(options.gt_list) if s.label is not None]
    return [s for s in images if s.label is not None]


def _image_samples(options: ReportOptions, run_info: Mapping[str, Any] | None,
                   run_dir: Path) -> list[Sample]:
    if options.images is not None or options.pair_list is not None:
        return source_samples(options.images, options.pair_list)
    found = source_samples(None, None, run_info, run_dir)
    if not found and options.gt_list is not None:
        return read_pair_list(options.gt_list)
    return found


def _failures(run_dir: Path, run_info: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """This run's failed images: run.json's list, else errors.jsonl (a run cut short)."""
    if run_info is not None and isinstance(run_info.get("failures"), list):
        return [f for f in run_info["failures"] if isinstance(f, Mapping)]
    errors = run_dir / ERRORS_FILE
    if not errors.is_file():
        return []
    found = []
    for line in errors.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def _mean_confidence(path: Path) -> float:
    with Image.open(path) as im:
        return float(np.asarray(im, dtype=np.float32).mean() / 255.0)


def label_facts(run_dir: Path, options: ReportOptions, has_eval: bool,
                warnings: list[str], reporter: Reporter | None = None) -> LabelFacts:
    """Record, class shares, per-image scores, computed metrics and the gallery of a label run.

    ``warnings`` receives what the reader should know before trusting the page
    (images not found).
    """
    labels = run_dir / LABELS
    run_file = run_dir / RUN_FILE
    run_info = read_json(run_file, "run record") if run_file.is_file() else None
    if run_info is not None and not isinstance(run_info, dict):
        raise InputError(run_file, "expected a JSON object")
    facts = LabelFacts(run_info=run_info)
    spec: ClassSpec | None = None
    try:
        spec = resolve_spec(run_dir, options.classes, run_info)
    except InputError as exc:
        facts.notes.append(f"{exc} (class names unknown: ids are shown)")
    ignore_index = spec.ignore_index if spec is not None else 255
    failures = _failures(run_dir, run_info)
    facts.failures, facts.failures_total = failures[:_LISTED], len(failures)

    keys = list_label_keys(labels) if labels.is_dir() else []
    facts.label_count = len(keys)
    if not keys:
        return facts
    images = _image_samples(options, run_info, run_dir)
    image_for = match_samples(keys, images)
    gt_for = {k: s.label for k, s in match_samples(keys, _gt_samples(options, images)).items()
              if s.label is not None}
    if not images:
        warnings.append("images not found (moved, or the run was started elsewhere): the "
                        "gallery shows label colours only; pass --images or --list")

    class_pixels = np.zeros(256, dtype=np.int64)
    total_cm = ConfusionMatrix(spec.num_classes, ignore_index) if spec and gt_for else None
    scores: list[ImageScore] = []
    problems: list[str] = []
    with or_silent(reporter).task("report", total=len(keys)) as task:
        for key in keys:
            task.advance()
            score = ImageScore(key)
            try:
                label = read_label(labels / f"{key}.png")
            except InputError as exc:
                problems.append(str(exc))
                continue
            class_pixels += np.bincount(label.ravel(), minlength=256)
            confidence_path = run_dir / CONFIDENCE / f"{key}.png"
            if confidence_path.is_file():
                try:
                    score.confidence = _mean_confidence(confidence_path)
                except OSError as exc:
                    problems.append(f"{confidence_path}: {exc}")
            if key in gt_for and spec is not None:
                try:
                    gt = read_label(gt_for[key], num_classes=spec.num_classes,
                                    ignore_index=ignore_index, expected_size=label.shape)
                    cm = ConfusionMatrix(spec.num_classes, ignore_index)
                    cm.update(label, gt)
                    score.miou = compute_metrics(cm, spec.names)["miou"]
                    score.has_gt = True
                    assert total_cm is not None
                    total_cm.merge(cm)
                except InputError as exc:
                    problems.append(str(exc))
            scores.append(score)

    total_pixels = int(class_pixels.sum()) or 1
    facts.class_shares = [(class_label(i, spec, ignore_index),
                           100.0 * float(class_pixels[i]) / total_pixels)
                          for i in range(256) if class_pixels[i] > 0]
    facts.problems, facts.problems_total = problems[:_LISTED], len(problems)
    facts.image_count = len(scores)
    if total_cm is not None and spec is not None and not has_eval:
        metrics = compute_metrics(total_cm, spec.names)
        metrics["images_evaluated"] = sum(1 for s in scores if s.has_gt)
        metrics["top_confusions"] = top_confusions(total_cm, spec.names)
        facts.computed = metrics_facts(metrics, (total_cm.matrix, spec.names,
                                                 [*spec.names, "unlabelled"]), "pseudo labels")
    if options.gallery > 0:
        facts.gallery = build_gallery(scores, labels, image_for, gt_for, spec, ignore_index,
                                      options.gallery, options.thumb_size, reporter)
    return facts


# --------------------------------------------------------------------------- a whole run


def run_kinds(path: Path) -> list[str]:
    """Which kinds of run PATH holds: any of "label", "eval", "train"."""
    if path.is_file():
        return ["eval"] if path.suffix == ".json" else []
    kinds = []
    if (path / RUN_FILE).is_file() or (path / LABELS).is_dir():
        kinds.append("label")
    if eval_files(path):
        kinds.append("eval")
    if any((path / name).is_file() for name in TRAIN_FILES):
        kinds.append("train")
    return kinds


def gather(run_dir: str | PathLike[str], options: ReportOptions | None = None,
           reporter: Reporter | None = None) -> RunFacts:
    """All the page's facts about a run folder (or an eval JSON file)."""
    options = options or ReportOptions()
    if options.gallery < 0 or options.thumb_size < 16:
        raise ValueError("gallery must be >= 0 and thumb size >= 16")
    path = Path(run_dir)
    if not path.exists():
        raise InputError(path, "run folder not found")
    kinds = run_kinds(path)
    if not kinds:
        raise InputError(path, f"not a zsplg run: no {RUN_FILE} or {LABELS}/ (label), no eval "
                               f"JSON (eval), no {', '.join(TRAIN_FILES[:-1])} or "
                               f"{TRAIN_FILES[-1]} (train)")
    facts = RunFacts(path=path, kinds=kinds)
    if path.is_file():
        facts.evals.append(eval_facts(path))
        return facts
    evals = eval_files(path)
    if "label" in kinds:
        facts.label = label_facts(path, options, bool(evals), facts.warnings, reporter)
    facts.evals = [eval_facts(p) for p in evals]
    if "train" in kinds:
        facts.train = train_facts(path)
    return facts
