"""`zsplg report`: one self-contained HTML page for a label, eval or train run folder.

A run folder is only useful if a person can see what is in it without writing
a script. The page shows whatever the folder holds, and says what is missing
instead of failing:

* label run (``run.json``, ``labels/``): settings, counts and timings, the pixel
  share of every class, a gallery of image / pseudo label / ground truth
  overlays, worst first by per-image mIoU where ground truth exists (else least
  confident first), and a computed evaluation when no eval JSON is there;
* eval run (``eval.json`` + ``eval_confusion.csv`` from `zsplg eval`): metrics
  table, per-class IoU bars, confusion-matrix heat map, top confusions, and
  the confidence floors when eval computed them;
* train run (``config.yaml``, ``history.jsonl``, ``metrics.json``): loss, LR and
  validation-mIoU curves plus the final metrics.

Everything is inline (CSS, SVG charts, base64 JPEG thumbnails), and a
Content-Security-Policy forbids any network load, so the file opens offline
and can be mailed on its own.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console

from zsplg import __version__
from zsplg.cli.console import make_progress
from zsplg.data.classes import ClassSpec
from zsplg.data.errors import InputError
from zsplg.data.images import image_size, read_image
from zsplg.data.labels import atomic_write_text, read_label, voc_colormap
from zsplg.data.run_folder import (
    CONFIDENCE,
    LABELS,
    RUN_FILE,
    list_label_keys,
    match_samples,
    read_json,
    resolve_spec,
    source_samples,
)
from zsplg.data.sources import Sample, read_pair_list
from zsplg.export import overlay
from zsplg.metrics import ConfusionMatrix, compute_metrics, top_confusions
from zsplg.report.charts import bar_chart, heatmap, line_chart

TRAIN_FILES = ("config.yaml", "history.jsonl", "metrics.json")
REPORT_FILE = "report.html"
_NOT_EVAL = {RUN_FILE, "metrics.json"}
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")


@dataclass
class ReportOptions:
    """Where the images and ground truth are, and how much of them to show."""

    images: str | PathLike[str] | None = None
    pair_list: str | PathLike[str] | None = None
    gt_list: str | PathLike[str] | None = None
    classes: str | PathLike[str] | None = None
    gallery: int = 24
    thumb_size: int = 320


@dataclass
class _Page:
    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, html)
    notes: list[str] = field(default_factory=list)

    def add(self, anchor: str, heading: str, body: str) -> None:
        self.sections.append((anchor, heading, body))


# --------------------------------------------------------------------------- formatting


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "\u2013" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted key, short text) rows."""
    if isinstance(data, Mapping):
        rows = []
        for key, value in data.items():
            rows.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(data, list | tuple):
        if all(not isinstance(v, dict | list) for v in data):
            text = ", ".join(_fmt(v) for v in data)
        else:
            text = json.dumps(data)
        return [(prefix, text if len(text) <= 300 else text[:299] + "\u2026")]
    return [(prefix, _fmt(data, 4))]


def _kv_table(rows: Sequence[tuple[str, str]], css: str = "kv") -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="{css}">{body}</table>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], css: str = "grid") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _data_uri(rgb: np.ndarray, quality: int = 85) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- metrics blocks


_SUMMARY_KEYS = (("miou", "mIoU"), ("pixel_accuracy", "pixel accuracy"),
                 ("mean_accuracy", "mean accuracy"),
                 ("frequency_weighted_iou", "frequency-weighted IoU"), ("coverage", "coverage"),
                 ("num_classes_evaluated", "classes evaluated"), ("valid_pixels", "valid pixels"),
                 ("unlabelled_pixels", "unlabelled (abstained) pixels"),
                 ("images_evaluated", "images evaluated"), ("images_failed", "images failed"))


def read_confusion_csv(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
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


def metrics_block(metrics: Mapping[str, Any],
                  confusion: tuple[np.ndarray, list[str], list[str]] | None,
                  title: str) -> str:
    """Summary table, per-class table and IoU bars, heat map, top confusions, errors."""
    parts = [_kv_table([(label, _fmt(metrics.get(key))) for key, label in _SUMMARY_KEYS
                        if key in metrics], "kv summary")]
    per_class = [r for r in metrics.get("per_class") or [] if isinstance(r, Mapping)]
    if per_class:
        names = [str(r.get("name", r.get("id", "?"))) for r in per_class]
        parts.append('<div class="figure">' + bar_chart(
            names, [r.get("iou") for r in per_class], f"{title}: IoU per class (%)") + "</div>")
        parts.append(_table(["id", "class", "IoU", "precision", "recall", "GT pixels",
                             "predicted pixels"],
                            [[_fmt(r.get("id")), str(r.get("name")), _fmt(r.get("iou")),
                              _fmt(r.get("precision")), _fmt(r.get("recall")),
                              _fmt(r.get("gt_pixels")), _fmt(r.get("pred_pixels"))]
                             for r in per_class]))
    if confusion is not None:
        matrix, rows, cols = confusion
        parts.append('<div class="figure">' + heatmap(matrix, rows, cols,
                                                      f"{title}: confusion matrix") + "</div>")
    confusions = metrics.get("top_confusions") or []
    if confusions:
        parts.append("<h4>Largest confusions</h4>" + _table(
            ["ground truth", "predicted as", "pixels", "% of that class"],
            [[str(c.get("gt")), str(c.get("pred")), _fmt(c.get("pixels")),
              _fmt(c.get("share_of_gt"))] for c in confusions]))
    floors = [f for f in metrics.get("confidence_floors") or [] if isinstance(f, Mapping)]
    if floors:
        parts.append("<h4>Only pixels at least this confident</h4>" + _table(
            ["confidence >=", "kept % of gt", "mIoU", "pixel acc", "lowest class precision"],
            [[_fmt(f.get("floor")), _fmt(f.get("kept")), _fmt(f.get("miou")),
              _fmt(f.get("pixel_accuracy")),
              _fmt(min((c["precision"] for c in f.get("per_class") or []
                        if c.get("precision") is not None), default=None))]
             for f in floors]))
    errors = metrics.get("errors") or []
    if errors:
        parts.append(f"<h4>Skipped images ({len(errors)})</h4>" + _table(
            ["key", "path", "problem"],
            [[str(e.get("key")), str(e.get("path")), str(e.get("error"))] for e in errors[:50]]))
    return "".join(parts)


def _is_metrics(data: Any) -> bool:
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
        if _is_metrics(data):
            found.append(path)
    return found


def eval_section(path: Path, page: _Page) -> None:
    """One eval JSON and its confusion CSV."""
    metrics = read_json(path, "eval JSON")
    if not _is_metrics(metrics):
        raise InputError(path, "not a `zsplg eval` JSON (no 'per_class' list)")
    csv_path = path.with_name(f"{path.stem}_confusion.csv")
    confusion = None
    body = []
    inputs = metrics.get("inputs") or {}
    if inputs:
        body.append(_kv_table([(k, _fmt(v)) for k, v in inputs.items() if k != "classes"]))
    if csv_path.is_file():
        try:
            confusion = read_confusion_csv(csv_path)
        except InputError as exc:
            body.append(_note(str(exc)))
    else:
        body.append(_note(f"{csv_path.name} not found: no confusion matrix"))
    body.append(metrics_block(metrics, confusion, path.stem))
    page.add(f"eval-{path.stem}", f"Evaluation: {path.name}", "".join(body))


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
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            xs.append(float(r["iter"]))
            ys.append(float(value))
    return xs, ys


def train_section(folder: Path, page: _Page) -> None:
    """Curves from history.jsonl, final metrics from metrics.json, the resolved config."""
    body = []
    history = folder / "history.jsonl"
    last_val: dict[str, Any] | None = None
    if history.is_file():
        records, bad = read_history(history)
        steps = [r for r in records if "val" not in r]
        vals = [r for r in records if isinstance(r.get("val"), dict)]
        body.append(_kv_table([("training records", _fmt(len(steps))),
                               ("validations", _fmt(len(vals))),
                               ("last iteration", _fmt(max((int(r["iter"]) for r in records),
                                                           default=None))),
                               ("unreadable lines", _fmt(bad))]))
        losses = [(key, *_series(steps, key)) for key in ("loss", "loss_x", "loss_u")]
        losses = [s for s in losses if s[1]]
        charts = []
        if losses:
            charts.append(line_chart(losses, "Training loss", y_label="loss"))
        val_x = [float(r["iter"]) for r in vals]
        val_y = [r["val"].get("miou") for r in vals]
        if vals:
            charts.append(line_chart([("val mIoU", val_x, val_y)], "Validation mIoU",
                                     y_label="mIoU (%)", css_class="chart-lines chart-val"))
            last_val = vals[-1]
        for key, label in (("lr", "Learning rate"), ("mask_ratio", "Mask ratio")):
            xs, ys = _series(steps, key)
            if xs:
                charts.append(line_chart([(key, xs, ys)], label, y_label=key))
        body.extend(f'<div class="figure">{c}</div>' for c in charts)
        if not charts:
            body.append(_note("history.jsonl has no plottable records"))
    else:
        body.append(_note("history.jsonl not found: no training curves"))
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        metrics = read_json(metrics_path, "final metrics")
        if _is_metrics(metrics):
            csv_path = folder / "metrics_confusion.csv"
            confusion = read_confusion_csv(csv_path) if csv_path.is_file() else None
            body.append("<h3>Final metrics (metrics.json)</h3>"
                        + metrics_block(metrics, confusion, "final"))
        else:
            body.append(_note("metrics.json holds no per-class metrics"))
    elif last_val is not None and _is_metrics(last_val["val"]):
        body.append(f"<h3>Latest validation (iteration {int(last_val['iter'])})</h3>"
                    + _note("metrics.json not found (training unfinished?)")
                    + metrics_block(last_val["val"], None, "latest validation"))
    else:
        body.append(_note("metrics.json not found"))
    config = folder / "config.yaml"
    if config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        body.append("<h3>Configuration (config.yaml)</h3><pre class=\"config\">"
                    + escape(text[:20000]) + "</pre>")
    else:
        body.append(_note("config.yaml not found"))
    page.add("train", "Training run", "".join(body))


# --------------------------------------------------------------------------- label runs


@dataclass
class _ImageStats:
    key: str
    miou: float | None = None
    confidence: float | None = None
    has_gt: bool = False


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


def _names(spec: ClassSpec | None, num: int = 256) -> list[str]:
    return spec.names if spec is not None else [f"class {i}" for i in range(num)]


def _thumb_pair(image_path: Path | None, label: np.ndarray, gt: np.ndarray | None,
                size: int) -> tuple[str | None, str, str | None, str | None]:
    """(image, pseudo overlay, gt overlay) data URIs and a problem note, at thumbnail size."""
    problem = None
    image = None
    if image_path is not None:
        try:
            height, width = image_size(image_path)
            if (height, width) != label.shape:
                problem = (f"{image_path}: image {height}x{width} does not match its label "
                           f"{label.shape[0]}x{label.shape[1]}")
            else:
                image = read_image(image_path, max_side=size)
        except InputError as exc:
            problem = str(exc)
    if image is None:
        scale = size / max(label.shape)
        dims = (max(1, round(label.shape[1] * min(scale, 1))),
                max(1, round(label.shape[0] * min(scale, 1))))
    else:
        dims = (image.shape[1], image.shape[0])

    def small(index_map: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(index_map).resize(dims, Image.Resampling.NEAREST))

    colours = voc_colormap()
    pseudo_small = small(label)
    pseudo = overlay(image, pseudo_small) if image is not None else colours[pseudo_small]
    gt_uri = None
    if gt is not None:
        gt_small = small(gt)
        gt_uri = _data_uri(overlay(image, gt_small) if image is not None else colours[gt_small])
    return (_data_uri(image) if image is not None else None, _data_uri(pseudo), gt_uri, problem)


def _legend(class_ids: set[int], names: list[str], ignore_index: int) -> str:
    colours = voc_colormap()
    items = []
    for class_id in sorted(class_ids):
        name = "ignore" if class_id == ignore_index else (
            names[class_id] if class_id < len(names) else f"id {class_id}")
        r, g, b = (int(v) for v in colours[class_id])
        items.append(f'<span class="swatch"><i style="background:rgb({r},{g},{b})"></i>'
                     f"{escape(name)}</span>")
    return '<div class="legend">' + "".join(items) + "</div>"


def _figure(stats: _ImageStats, uris: tuple[str | None, str, str | None, str | None]) -> str:
    image_uri, pseudo_uri, gt_uri, problem = uris
    cells = []
    for uri, caption in ((image_uri, "image"), (pseudo_uri, "pseudo label"),
                         (gt_uri, "ground truth")):
        if uri is not None:
            cells.append(f'<div class="thumb"><img src="{uri}" alt="{caption}: '
                         f'{escape(stats.key)}"><span>{caption}</span></div>')
    facts = []
    if stats.miou is not None or stats.has_gt:
        facts.append(f"mIoU {_fmt(stats.miou, 1)}")
    if stats.confidence is not None:
        facts.append(f"mean confidence {stats.confidence:.2f}")
    caption = escape(stats.key) + (" \u2014 " + ", ".join(facts) if facts else "")
    if problem:
        caption += f'<br><span class="problem">{escape(problem)}</span>'
    return (f'<figure class="gallery-item"><div class="thumbs">{"".join(cells)}</div>'
            f"<figcaption>{caption}</figcaption></figure>")


def label_section(run_dir: Path, options: ReportOptions, page: _Page,
                  console: Console | None, has_eval: bool) -> None:
    """Settings, counts, class shares, computed metrics and the gallery of a label run."""
    labels = run_dir / LABELS
    run_file = run_dir / RUN_FILE
    run_info = read_json(run_file, "run record") if run_file.is_file() else None
    if run_info is not None and not isinstance(run_info, dict):
        raise InputError(run_file, "expected a JSON object")
    body = []
    spec: ClassSpec | None = None
    try:
        spec = resolve_spec(run_dir, options.classes, run_info)
    except InputError as exc:
        body.append(_note(f"{exc} (class names unknown: ids are shown)"))
    ignore_index = spec.ignore_index if spec is not None else 255
    names = _names(spec)
    if run_info is not None:
        counts = run_info.get("counts") or {}
        facts = [("status", _fmt(run_info.get("status"))),
                 ("zsplg", _fmt(run_info.get("zsplg_version"))),
                 ("device", _fmt(run_info.get("device"))),
                 *[(k.replace("_", " "), _fmt(v)) for k, v in counts.items()],
                 ("seconds", _fmt(run_info.get("seconds"))),
                 ("seconds per image", _fmt(run_info.get("seconds_per_image"), 3))]
        inputs = run_info.get("inputs") or {}
        facts += [(f"input: {k}", _fmt(v)) for k, v in inputs.items() if k != "classes"]
        body.append("<h3>Run</h3>" + _kv_table(facts))
        body.append("<h3>Settings</h3>" + _kv_table(_flatten(run_info.get("settings") or {})))
        for key, heading in (("backends", "Backends"), ("versions", "Library versions")):
            if run_info.get(key):
                body.append(f"<details><summary>{heading}</summary>"
                            + _kv_table(_flatten(run_info[key])) + "</details>")
        failures = run_info.get("failures") or []
        if failures:
            body.append(f"<h3>Failed images ({len(failures)})</h3>" + _table(
                ["key", "problem"], [[str(f.get("key")), str(f.get("error"))]
                                     for f in failures[:50]]))
    else:
        body.append(_note(f"{RUN_FILE} not found: settings and timings unknown"))

    keys = list_label_keys(labels) if labels.is_dir() else []
    if not keys:
        body.append(_note("no label PNGs in labels/"))
        page.add("label", "Labelling run", "".join(body))
        return
    images = _image_samples(options, run_info, run_dir)
    image_for = match_samples(keys, images)
    gt_for = {k: s.label for k, s in match_samples(keys, _gt_samples(options, images)).items()
              if s.label is not None}
    if not images:
        page.notes.append("images not found (moved, or the run was started elsewhere): the "
                          "gallery shows label colours only; pass --images or --list")

    class_pixels = np.zeros(256, dtype=np.int64)
    total_cm = ConfusionMatrix(spec.num_classes, ignore_index) if spec and gt_for else None
    stats: list[_ImageStats] = []
    problems: list[str] = []
    progress = make_progress(console) if console is not None else None
    task = progress.add_task("report", total=len(keys)) if progress is not None else None
    if progress is not None:
        progress.start()
    try:
        for key in keys:
            item = _ImageStats(key)
            try:
                label = read_label(labels / f"{key}.png")
            except InputError as exc:
                problems.append(str(exc))
                continue
            class_pixels += np.bincount(label.ravel(), minlength=256)
            confidence_path = run_dir / CONFIDENCE / f"{key}.png"
            if confidence_path.is_file():
                try:
                    with Image.open(confidence_path) as im:
                        item.confidence = float(np.asarray(im, dtype=np.float32).mean() / 255.0)
                except OSError as exc:
                    problems.append(f"{confidence_path}: {exc}")
            if key in gt_for and spec is not None:
                try:
                    gt = read_label(gt_for[key], num_classes=spec.num_classes,
                                    ignore_index=ignore_index, expected_size=label.shape)
                    cm = ConfusionMatrix(spec.num_classes, ignore_index)
                    cm.update(label, gt)
                    item.miou = compute_metrics(cm, spec.names)["miou"]
                    item.has_gt = True
                    assert total_cm is not None
                    total_cm.merge(cm)
                except InputError as exc:
                    problems.append(str(exc))
            stats.append(item)
            if progress is not None and task is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()

    shown = [i for i in range(256) if class_pixels[i] > 0]
    total_pixels = int(class_pixels.sum()) or 1
    share_names = ["ignore" if i == ignore_index else (names[i] if i < len(names) else str(i))
                   for i in shown]
    body.append('<h3>Pixel share per class</h3><div class="figure">' + bar_chart(
        share_names, [100.0 * class_pixels[i] / total_pixels for i in shown],
        f"share of all labelled pixels (%), {len(stats)} images", unit="%",
        css_class="chart-bars chart-shares") + "</div>")
    if problems:
        body.append(f"<h3>Problems ({len(problems)})</h3><ul>"
                    + "".join(f"<li>{escape(p)}</li>" for p in problems[:50]) + "</ul>")
    page.add("label", "Labelling run", "".join(body))

    if total_cm is not None and spec is not None and not has_eval:
        metrics = compute_metrics(total_cm, spec.names)
        metrics["images_evaluated"] = sum(1 for s in stats if s.has_gt)
        metrics["top_confusions"] = top_confusions(total_cm, spec.names)
        page.add("label-eval", "Evaluation against ground truth (computed for this report)",
                 _note("no eval JSON in this folder: the pseudo labels were scored against "
                       "the ground truth found for them, as `zsplg eval` would")
                 + metrics_block(metrics, (total_cm.matrix, spec.names,
                                           [*spec.names, "unlabelled"]), "pseudo labels"))
    if options.gallery > 0:
        page.add("gallery", "Gallery", _gallery(stats, labels, image_for, gt_for, spec,
                                                ignore_index, options))


def _gallery(stats: list[_ImageStats], labels: Path, image_for: dict[str, Sample],
             gt_for: dict[str, Path], spec: ClassSpec | None, ignore_index: int,
             options: ReportOptions) -> str:
    # Worst first: images with ground truth by mIoU, then the rest by mean confidence
    # (the labeller's own doubt), then key order.
    order = sorted(stats, key=lambda s: (not s.has_gt, s.miou if s.miou is not None else 101.0,
                                         s.confidence is None, s.confidence or 0.0, s.key))
    if any(s.has_gt for s in stats):
        how = "worst first by per-image mIoU, then images without ground truth"
    else:
        how = "no ground truth"
    if any(s.confidence is not None for s in stats):
        how += ", least confident first (mean winning-class probability)"
    picked = order[: options.gallery]
    figures, present = [], set()
    for item in picked:
        label = read_label(labels / f"{item.key}.png")
        gt = None
        if item.has_gt and spec is not None:
            gt = read_label(gt_for[item.key], num_classes=spec.num_classes,
                            ignore_index=ignore_index, expected_size=label.shape)
            present.update(int(v) for v in np.unique(gt))
        present.update(int(v) for v in np.unique(label))
        sample = image_for.get(item.key)
        uris = _thumb_pair(sample.image if sample else None, label, gt, options.thumb_size)
        figures.append(_figure(item, uris))
    intro = _note(f"{len(picked)} of {len(stats)} images, {how}; overlays blend the image "
                  "with the label colours")
    return (intro + _legend(present, _names(spec), ignore_index)
            + '<div class="gallery">' + "".join(figures) + "</div>")


# --------------------------------------------------------------------------- the page


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#243447;color:#fff;padding:16px 28px}
header h1{margin:0 0 4px;font-size:22px}header p{margin:2px 0;color:#cfd8e3;font-size:13px}
nav{padding:8px 28px;background:#e9eef3;font-size:14px}nav a{margin-right:16px;color:#243447}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:12px 20px;
margin:16px 0}
h2{font-size:19px;margin:6px 0 10px}h3{font-size:16px;margin:16px 0 8px}
h4{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
table.grid thead th{background:#f0f3f6}table.kv th{background:#f7f7f7;font-weight:500}
table.summary td{font-weight:600}
.note{color:#666;font-size:13px}.problem{color:#b00020}
.figure{margin:10px 0;overflow-x:auto}
pre.config{background:#f6f8fa;padding:10px;font-size:12px;overflow:auto;max-height:480px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:14px;
align-items:start}
.gallery-item{margin:0;border:1px solid #e2e2e2;border-radius:4px;padding:6px;cursor:zoom-in}
.gallery-item.zoom{grid-column:1/-1;cursor:zoom-out}
.thumbs{display:flex;gap:4px}
.thumb{flex:0 0 calc(33.3% - 3px);text-align:center;font-size:11px;color:#666}
.thumb img{width:100%;height:auto;display:block;image-rendering:auto}
figcaption{font-size:12px;margin-top:4px;word-break:break-all}
.legend{display:flex;flex-wrap:wrap;gap:10px;font-size:12px;margin:6px 0 10px}
.swatch i{display:inline-block;width:12px;height:12px;margin-right:4px;
vertical-align:-2px;border:1px solid #999}
.warnings{background:#fff4e5;border:1px solid #f0c36d;padding:8px 14px;border-radius:4px}
"""

_SCRIPT = """
document.querySelectorAll('.gallery-item').forEach(function (item) {
  item.addEventListener('click', function () { item.classList.toggle('zoom'); });
});
"""


def render_page(page: _Page, subtitle: str) -> str:
    """The whole HTML document: head with CSP and style, navigation, sections."""
    nav = "".join(f'<a href="#{escape(a)}">{escape(h)}</a>' for a, h, _ in page.sections)
    warnings = ""
    if page.notes:
        warnings = ('<div class="warnings">' + "".join(f"<p>{escape(n)}</p>" for n in page.notes)
                    + "</div>")
    sections = "".join(f'<section id="{escape(a)}"><h2>{escape(h)}</h2>{body}</section>'
                       for a, h, body in page.sections)
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(page.title)}</title><style>{_STYLE}</style></head><body>"
            f"<header><h1>{escape(page.title)}</h1><p>{escape(subtitle)}</p>"
            f"<p>generated {generated} by zsplg {escape(__version__)}</p></header>"
            f"<nav>{nav}</nav><main>{warnings}{sections}</main>"
            f"<script>{_SCRIPT}</script></body></html>\n")


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


def render_report(run_dir: str | PathLike[str], options: ReportOptions | None = None,
                  console: Console | None = None) -> str:
    """The report of a run folder (or an eval JSON file) as one HTML string."""
    options = options or ReportOptions()
    if options.gallery < 0 or options.thumb_size < 16:
        raise ValueError("gallery must be >= 0 and thumb size >= 16")
    path = Path(run_dir)
    if not path.exists():
        raise InputError(path, "run folder not found")
    kinds = run_kinds(path)
    if not kinds:
        raise InputError(path, "not a zsplg run: no run.json or labels/ (label), no eval JSON "
                               "(eval), no config.yaml, history.jsonl or metrics.json (train)")
    page = _Page(title=f"zsplg report: {path.name}")
    if path.is_file():
        eval_section(path, page)
    else:
        evals = eval_files(path)
        if "label" in kinds:
            label_section(path, options, page, console, has_eval=bool(evals))
        for eval_path in evals:
            eval_section(eval_path, page)
        if "train" in kinds:
            train_section(path, page)
    return render_page(page, f"{', '.join(kinds)} run \u2014 {path.resolve()}")


def default_report_path(run_dir: str | PathLike[str]) -> Path:
    """RUN_DIR/report.html, or NAME_report.html beside an eval JSON file."""
    path = Path(run_dir)
    return path.with_name(f"{path.stem}_report.html") if path.is_file() else path / REPORT_FILE


def write_report(run_dir: str | PathLike[str], out: str | PathLike[str] | None = None,
                 options: ReportOptions | None = None, console: Console | None = None) -> Path:
    """Render the report and write it atomically; returns the file written."""
    html = render_report(run_dir, options, console)
    target = Path(out) if out is not None else default_report_path(run_dir)
    try:
        atomic_write_text(target, html)
    except OSError as exc:
        raise InputError(target, f"cannot write the report ({exc.strerror or exc})") from None
    return target


__all__ = ["ReportOptions", "default_report_path", "metrics_block", "render_report", "run_kinds",
           "write_report"]
