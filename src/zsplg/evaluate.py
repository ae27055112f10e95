"""Evaluate a folder of pseudo-label PNGs against a dataset's ground truth.

Per-image problems (missing prediction, missing/unreadable gt, a gt whose size
differs from its image or from the prediction, class ids outside the class
spec) are collected as error records instead of aborting, so one bad file does
not throw away an evaluation over thousands of images; silently counting an
out-of-range id as "unlabelled" would instead bias the scores without a word.
A label stored as RGB is a dataset-level mistake (colour-coded masks instead
of indices) and is raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zsplg import IGNORE_INDEX
from zsplg.data.classes import load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.images import image_size
from zsplg.data.labels import LabelModeError, atomic_write_text, read_index_array
from zsplg.data.run_folder import CONFIDENCE, labels_dir, list_label_keys, match_samples
from zsplg.data.sources import read_pair_list
from zsplg.metrics import (
    CONFUSION_ADVICE,
    ConfusionMatrix,
    compute_metrics,
    format_confusions,
    format_floors,
    format_table,
    top_confusions,
    unnamed_advice,
    unnamed_classes,
    write_confusion_csv,
)
from zsplg.runtime.progress import Reporter, or_silent


class SampleLike(Protocol):
    """What evaluate_folder needs from a dataset sample (duck-typed)."""

    @property
    def image(self) -> Path: ...

    @property
    def label(self) -> Path | None: ...

    @property
    def key(self) -> str: ...


class LabelFormatError(ValueError):
    """A label/prediction file is not a single-channel index map."""


class NoImageScoredError(InputError):
    """Not one listed image could be scored, so there is no metric to report.

    An InputError naming the predictions folder; the command exits 1 on it, since
    the inputs were readable but do not belong together.
    """


def read_index_map(path: Path, what: str = "label") -> np.ndarray:
    """A PNG as an (H, W) class-index array (palette images yield their indices).

    The reading rules are `zsplg.data.labels.read_index_array`'s; a colour-coded mask
    is refused here as a LabelFormatError, which stops the evaluation: it means
    the whole folder is in the wrong format, not that one file is bad.
    """
    try:
        return read_index_array(path)
    except LabelModeError as exc:
        raise LabelFormatError(
            f"{what} {path} has image mode {exc.mode}; expected a single-channel index map "
            f"(mode P or L). Colour-coded masks must be converted to class indices first."
        ) from None


def out_of_range_ids(arr: np.ndarray, num_classes: int, allowed: Sequence[int]) -> list[int]:
    """Ids in ``arr`` that are neither a class (0 <= id < num_classes) nor one of ``allowed``."""
    if arr.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    else:  # 16/32-bit label files: values may be large or negative
        present = np.unique(arr)
    return [int(v) for v in present if not 0 <= v < num_classes and v not in allowed]


def _ids_message(what: str, bad: list[int], num_classes: int, allowed: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in bad[:5]) + (f" (and {len(bad) - 5} more)"
                                                  if len(bad) > 5 else "")
    ok = " or ".join(str(a) for a in sorted(set(allowed)))
    return (f"{what} values out of range: {shown} (the class spec has {num_classes} classes, "
            f"ids 0..{num_classes - 1}, plus {ok} for ignore)")


def _image_size_problem(sample: SampleLike, gt_shape: tuple[int, ...]) -> str | None:
    """Why the ground truth does not fit its image, or None (also when the image is absent:
    evaluation itself does not need the image)."""
    image = Path(sample.image)
    if image == Path(sample.label or "") or not image.is_file():
        return None
    try:
        size = image_size(image)
    except InputError:
        return None  # an unreadable image does not stop its label being scored
    if tuple(gt_shape) != size:
        return (f"ground-truth size {gt_shape[0]}x{gt_shape[1]} (HxW) does not match its "
                f"image {image} ({size[0]}x{size[1]})")
    return None


def match_predictions(pred_dir: Path, samples: Sequence[SampleLike]) -> dict[str, list[str]]:
    """Sample key -> the prediction keys that belong to it: its own key, else the
    predictions with its file name when no other listed image has that name
    (more than one such prediction is ambiguous; the caller refuses to guess).

    Label runs key their outputs by the path they were given, so a folder labelled
    from ``images/`` (key ``voc``) is still scored against a list whose entry is
    keyed ``images/voc``. The rule is the report's (:func:`match_samples`).
    """
    pred_dir = Path(pred_dir)
    listed = {s.key for s in samples}
    exact = {key for key in listed if (pred_dir / f"{key}.png").is_file()}
    found: dict[str, list[str]] = {key: [key] for key in exact}
    if len(exact) < len(listed) and pred_dir.is_dir():
        others = [key for key in list_label_keys(pred_dir) if key not in listed]
        for key, sample in match_samples(others, list(samples)).items():  # type: ignore[arg-type]
            if sample.key not in exact:
                found.setdefault(sample.key, []).append(key)
    return found


def evaluate_folder(
    pred_dir: Path,
    samples: Sequence[SampleLike],
    class_names: list[str],
    ignore_index: int = IGNORE_INDEX,
    progress: Callable[[int, int], None] | None = None,
    confidence_floors: Sequence[float] = (),
) -> tuple[dict[str, Any], ConfusionMatrix, list[dict[str, str]]]:
    """Score ``pred_dir/<key>.png`` against each labelled sample's gt.

    Samples without a label are skipped silently. A prediction is found by the
    sample's key, else by its unique file name (:func:`match_predictions`).
    ``progress(done, total)`` is called after every sample if given. Returns
    (metrics, matrix, errors); the metrics gain "images_evaluated" (also as
    "images_scored"), "images_listed" (samples with a label), "images_failed"
    and "top_confusions".

    confidence_floors: for a `zsplg label` folder (PRED = OUT/labels), also
    score only the pixels whose confidence (OUT/confidence) reaches each floor,
    with the share of ground-truth pixels kept ("confidence_floors" in the
    metrics). That is how sure labels are told apart from unsure ones before
    choosing `--min-confidence` or `--pseudo-min-confidence`.
    """
    pred_dir = Path(pred_dir)
    num_classes = len(class_names)
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    floors = sorted({float(f) for f in confidence_floors})
    if any(not 0.0 <= f <= 1.0 for f in floors):
        raise ValueError(f"confidence floors must be in [0, 1], got {floors}")
    confidence_dir = pred_dir.parent / CONFIDENCE
    if floors and not confidence_dir.is_dir():
        raise InputError(confidence_dir, "confidence maps not found: confidence floors need "
                                         "the confidence/ folder `zsplg label` writes beside "
                                         "labels/ (pass OUT/labels as --pred)")
    floor_cms = [ConfusionMatrix(num_classes, ignore_index=ignore_index) for _ in floors]
    errors: list[dict[str, str]] = []
    evaluated = 0
    total = len(samples)
    predictions = match_predictions(pred_dir, [s for s in samples if s.label is not None])

    def fail(key: str, path: Path, msg: str) -> None:
        errors.append({"key": key, "path": str(path), "error": msg})

    for done, sample in enumerate(samples, start=1):
        try:
            if sample.label is None:
                continue
            gt_path = Path(sample.label)
            pred_keys = predictions.get(sample.key, [])
            pred_path = pred_dir / f"{(pred_keys or [sample.key])[0]}.png"
            if not gt_path.is_file():
                fail(sample.key, gt_path, "ground-truth file not found")
                continue
            if len(pred_keys) > 1:
                fail(sample.key, pred_dir / f"{sample.key}.png",
                     f"no prediction with this key, and {len(pred_keys)} with its file name "
                     f"({', '.join(pred_keys[:3])}); cannot tell which is its own")
                continue
            if not pred_keys or not pred_path.is_file():
                fail(sample.key, pred_path, "prediction file not found")
                continue
            try:
                gt = read_index_map(gt_path, "label")
            except (OSError, InputError) as e:  # includes PIL.UnidentifiedImageError
                fail(sample.key, gt_path, f"cannot read ground truth: {e}")
                continue
            try:
                pred = read_index_map(pred_path, "prediction")
            except (OSError, InputError) as e:
                fail(sample.key, pred_path, f"cannot read prediction: {e}")
                continue
            if pred.shape != gt.shape:
                fail(
                    sample.key,
                    pred_path,
                    f"size mismatch: prediction {pred.shape} vs ground truth {gt.shape}",
                )
                continue
            size_problem = _image_size_problem(sample, gt.shape)
            if size_problem:
                fail(sample.key, gt_path, size_problem)
                continue
            bad = out_of_range_ids(gt, num_classes, (ignore_index,))
            if bad:
                fail(sample.key, gt_path, _ids_message("ground-truth", bad, num_classes,
                                                       (ignore_index,)))
                continue
            pred_allowed = (ignore_index, IGNORE_INDEX)
            bad = out_of_range_ids(pred, num_classes, pred_allowed)
            if bad:
                fail(sample.key, pred_path, _ids_message("prediction", bad, num_classes,
                                                         pred_allowed))
                continue
            if floors:
                confidence_path = confidence_dir / f"{sample.key}.png"
                try:
                    confidence = read_index_map(confidence_path, "confidence map") / 255.0
                except (OSError, InputError) as e:
                    fail(sample.key, confidence_path, f"cannot read confidence map: {e}")
                    continue
                if confidence.shape != gt.shape:
                    fail(sample.key, confidence_path, f"size mismatch: confidence map "
                                                      f"{confidence.shape} vs ground truth "
                                                      f"{gt.shape}")
                    continue
                for floor, floor_cm in zip(floors, floor_cms, strict=True):
                    floor_cm.update(pred, np.where(confidence >= floor, gt, ignore_index))
            cm.update(pred, gt)
            evaluated += 1
        finally:
            if progress is not None:
                progress(done, total)

    metrics = compute_metrics(cm, class_names)
    metrics["images_evaluated"] = evaluated
    metrics["images_scored"] = evaluated
    metrics["images_listed"] = sum(s.label is not None for s in samples)
    metrics["images_failed"] = len(errors)
    metrics["top_confusions"] = top_confusions(cm, class_names)
    if floors:
        metrics["confidence_floors"] = [_floor_metrics(floor, floor_cm, cm, class_names)
                                        for floor, floor_cm in zip(floors, floor_cms,
                                                                   strict=True)]
    return metrics, cm, errors


def _floor_metrics(floor: float, kept: ConfusionMatrix, everything: ConfusionMatrix,
                   class_names: list[str]) -> dict[str, Any]:
    metrics = compute_metrics(kept, class_names)
    valid = max(int(everything.matrix.sum()), 1)
    return {"floor": floor, "kept": 100.0 * float(kept.matrix.sum()) / valid,
            "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
            "per_class": [{"name": c["name"], "iou": c["iou"], "precision": c["precision"],
                           "recall": c["recall"]} for c in metrics["per_class"]]}


def write_eval_outputs(
    out_json: Path, metrics: dict[str, Any], cm: ConfusionMatrix, class_names: list[str],
    errors: list[dict[str, str]] | None = None,
) -> None:
    """Write metrics JSON and ``<stem>_confusion.csv`` beside it, for later audits.

    ``errors`` also go to ``<stem>_errors.jsonl`` (one JSON object a line, like
    `zsplg label`'s errors.jsonl, whose name it must not take in a label folder).
    An unwritable destination is an InputError naming it, not a traceback.
    """
    out_json = Path(out_json)
    csv_path = out_json.with_name(f"{out_json.stem}_confusion.csv")
    try:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        # allow_nan=False: a NaN here would be invalid JSON, so fail loudly instead.
        text = json.dumps(metrics, indent=2, allow_nan=False) + "\n"
        atomic_write_text(out_json, text)
        write_confusion_csv(csv_path, cm, class_names)
        if errors is not None:
            atomic_write_text(errors_path(out_json),
                              "".join(json.dumps(e) + "\n" for e in errors))
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else out_json
        raise InputError(where, f"cannot write the evaluation results "
                                f"({exc.strerror or exc})") from None


def errors_path(out_json: Path) -> Path:
    """``<stem>_errors.jsonl`` beside the metrics JSON."""
    return Path(out_json).with_name(f"{Path(out_json).stem}_errors.jsonl")


def default_json_path(pred_dir: Path) -> Path:
    """OUT/eval.json for a `zsplg label` folder (OUT/labels), else PRED/eval.json."""
    pred_dir = Path(pred_dir)
    return pred_dir.parent / "eval.json" if pred_dir.name == "labels" else pred_dir / "eval.json"


@dataclass
class EvalConfig:
    """The settings of ``zsplg eval``: one field per option."""

    pred: str
    pair_list: str
    classes: str
    json_path: str | None = None
    confidence_floors: list[float] = field(default_factory=list)

    def validate(self) -> None:
        """Fail before any file is read, naming the setting."""
        bad = [f for f in self.confidence_floors if not 0.0 <= float(f) <= 1.0]
        if bad:
            raise ValueError(f"confidence floors must be in [0, 1], got "
                             f"{sorted({float(f) for f in self.confidence_floors})}")


def _examples(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (", ..." if len(keys) > 3 else "")


def run_eval(config: EvalConfig, reporter: Reporter | None = None) -> tuple[dict, Path]:
    """The `zsplg eval` command: evaluate, report the tables, write JSON + CSV.

    Returns (metrics, path of the metrics JSON). Raises InputError for unusable
    inputs, and :class:`NoImageScoredError` (an InputError) when not one listed
    image could be scored, so a key mismatch is never a silent "mIoU undefined".
    """
    config.validate()
    reporter = or_silent(reporter)
    pred_dir = Path(config.pred)
    spec = load_class_spec(config.classes)
    samples = read_pair_list(config.pair_list)
    if not pred_dir.is_dir():
        raise InputError(str(pred_dir), "predictions folder not found")
    # a `zsplg label` OUT folder: its labels/ are the predictions (matching keys in
    # OUT itself would find labels/ and confidence/ twins and score nothing)
    if (resolved := labels_dir(pred_dir)) != pred_dir:
        reporter.log(f"--pred is a `zsplg label` folder: scoring {resolved}")
        pred_dir = resolved
    labelled = [s for s in samples if s.label]
    if not labelled:
        raise InputError(str(config.pair_list), "no line names a ground-truth label")
    if not match_predictions(pred_dir, labelled):
        pred_keys = list_label_keys(pred_dir)
        if not pred_keys:
            raise NoImageScoredError(pred_dir, "no image was scored: the folder holds no "
                                               "prediction PNGs")
        raise NoImageScoredError(
            pred_dir, f"no image was scored: prediction keys ({_examples(pred_keys)}) do not "
                      f"match the list {config.pair_list} ({_examples([s.key for s in labelled])}"
                      "), by key or by unique file name")
    with reporter.task("eval", total=len(samples)) as task:
        metrics, cm, errors = evaluate_folder(
            pred_dir, samples, spec.names, spec.ignore_index,
            progress=lambda done, total: task.update(completed=done),
            confidence_floors=config.confidence_floors)
    for error in errors[:10]:
        reporter.log(f"skipped {error['path']}: {error['error']}", level="warning")
    if len(errors) > 10:
        reporter.log(f"... and {len(errors) - 10} more (see the JSON)", level="warning")
    metrics["errors"] = errors
    metrics["inputs"] = {"pred": str(pred_dir), "list": str(config.pair_list),
                         "classes": spec.to_dict(), "ignore_index": spec.ignore_index}
    reporter.table(*format_table(metrics))
    if metrics["top_confusions"]:
        reporter.table(*format_confusions(metrics["top_confusions"], "top confusions"))
        reporter.log(CONFUSION_ADVICE)
    if unnamed := unnamed_classes(metrics):
        reporter.log(unnamed_advice(unnamed))
    if metrics.get("confidence_floors"):
        reporter.table(*format_floors(metrics["confidence_floors"]))
    json_path = Path(config.json_path) if config.json_path else default_json_path(pred_dir)
    write_eval_outputs(json_path, metrics, cm, spec.names, errors)
    reporter.log(f"scored {metrics['images_scored']} of {metrics['images_listed']} images")
    if not metrics["images_scored"]:
        raise NoImageScoredError(pred_dir, f"no image was scored: each of the "
                                           f"{len(errors)} failed (see {errors_path(json_path)})")
    return metrics, json_path
