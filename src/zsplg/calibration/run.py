"""`zsplg calibrate`, and the calibration step of `zsplg label`.

Produces a calibration file from a labelled pair-list with the same backends
`label` will use, reports the honest (cross-validated) gain and the labeller's
top confusions on the labelled images, and turns a Labeller into a calibrated
one after checking the file was fitted for the same classes, backends and
painting rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from zsplg.calibration.file import (
    Calibration,
    CalibrationError,
    fitted_for,
    load_checked,
)
from zsplg.calibration.labelled_set import LabelledSet, reduce_sample
from zsplg.calibration.search import calibrate
from zsplg.calibration.settings import CalibrateConfig
from zsplg.data.classes import ClassSpec, load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.run_folder import CALIBRATION_FILE
from zsplg.data.sources import read_pair_list
from zsplg.labeling.labeller import Labeller
from zsplg.labeling.settings import LabelConfig
from zsplg.metrics import CONFUSION_ADVICE, format_confusions
from zsplg.runtime.progress import Reporter, or_silent

__all__ = ["CALIBRATION_FILE", "expected_fit", "list_digest",
           "report_calibration", "run_calibrate", "use_calibration"]


def list_digest(pair_list: str | Path) -> str:
    """The labelled list's content (its lines), so a reused file was fitted on the same images."""
    return hashlib.sha256(Path(pair_list).read_bytes()).hexdigest()[:16]


def expected_fit(labeller: Labeller, spec: ClassSpec, overlap: str, uncovered: str,
                 unknown: str, max_side: int) -> dict:
    """What a calibration must have been fitted for to be used with this labeller."""
    return fitted_for(spec, labeller.mask_generator.config(),
                      labeller.uncalibrated_model.config(), overlap, uncovered, unknown,
                      max_side)


def use_calibration(config: LabelConfig, spec: ClassSpec, labeller: Labeller,
                    reporter: Reporter | None = None) -> tuple[LabelConfig, Labeller]:
    """`zsplg label --calibration FILE` / `--calibrate-on LIST`: the run's config with
    the calibration's settings (what run.json records), and the calibrated labeller.

    --calibrate-on writes OUT/calibration.json, and reuses it when it was fitted
    on the same list with the same backends (so a resumed run does not redo it).
    Raises CalibrationError for a file fitted for other settings, ValueError for
    options that contradict it, InputError for an unreadable file.
    """
    if not (config.calibration or config.calibrate_on):
        raise ValueError("use_calibration needs config.calibration or config.calibrate_on")
    reporter = or_silent(reporter)
    expected = expected_fit(labeller, spec, config.overlap, config.uncovered, config.unknown,
                            config.max_side)
    path = config.calibration or ""
    if config.calibrate_on:
        if config.calibration:
            raise ValueError("give --calibration FILE or --calibrate-on LIST, not both")
        path = str(Path(config.out) / CALIBRATION_FILE)
        reusable = False
        if Path(path).is_file() and not config.overwrite:
            try:
                previous = load_checked(path, expected)
                reusable = (previous.fitted_for.get("labelled_list_digest")
                            == list_digest(config.calibrate_on))
            except (InputError, CalibrationError):
                reusable = False
        if reusable:
            reporter.log(f"using {path} (fitted on the same labelled list)")
        else:
            run_calibrate(CalibrateConfig(pair_list=config.calibrate_on, classes=config.classes,
                                          out=path, overlap=config.overlap,
                                          uncovered=config.uncovered, unknown=config.unknown,
                                          max_side=config.max_side), reporter, labeller)
    calibration = load_checked(path, expected)
    for key, value in (("threshold", config.background_threshold),
                       ("temperature", config.temperature)):
        fitted = getattr(calibration, "background_threshold" if key == "threshold" else key)
        if value is not None and abs(value - fitted) > 1e-9:
            raise ValueError(f"--{key} {value:g} conflicts with the calibration's {fitted:g} "
                             f"({path}); leave --{key} out")
    if not config.calibrate_on:
        report = calibration.report
        reporter.log(f"calibration {path}: {calibration.mode}, cross-validated mIoU "
                     f"{report['before']['miou']:.2f} -> {report['after']['miou']:.2f} "
                     f"on {report['images']} labelled images")
    try:
        calibrated = labeller.with_calibration(calibration, config.annotator_config())
    except ValueError as exc:  # columns: only a file edited by hand gets here
        raise CalibrationError(f"{path}: {exc}") from None
    config = replace(config, calibration=str(path), templates=tuple(calibration.templates),
                     background_threshold=calibration.background_threshold,
                     temperature=calibration.temperature)
    return config, calibrated


def _reduce_all(config: CalibrateConfig, spec: ClassSpec, labeller: Labeller,
                reporter: Reporter) -> LabelledSet:
    samples = read_pair_list(config.pair_list)
    labelled = [s for s in samples if s.label is not None]
    if len(labelled) < 2:
        raise InputError(config.pair_list, f"calibration needs at least 2 lines with a label, "
                                           f"found {len(labelled)}")
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    images = []
    with reporter.task("reduce", total=len(labelled)) as task:
        for sample in labelled:
            images.append(reduce_sample(sample, labeller.mask_generator,
                                        labeller.uncalibrated_model, spec.num_classes,
                                        spec.ignore_index, config.max_side, cache_dir))
            task.advance()
    return LabelledSet(images, spec.num_classes)


def run_calibrate(config: CalibrateConfig, reporter: Reporter | None = None,
                  labeller: Labeller | None = None) -> Calibration:
    """Reduce the labelled images, calibrate, write the file and report the gain.

    labeller: already-built backends to use instead of the config's names.
    Raises InputError for unreadable inputs or an unwritable output.
    """
    reporter = or_silent(reporter)
    spec = load_class_spec(config.classes)
    read_pair_list(config.pair_list)  # bad lists fail before any model loads
    labeller = labeller or Labeller.from_names(
        spec, config.masks, config.vl, device=config.device, max_side=config.max_side,
        sam_checkpoint=config.sam_checkpoint, clip_checkpoint=config.clip_checkpoint,
        points_per_side=config.points_per_side, cache_masks=config.cache_masks,
        precision=config.precision)
    model = labeller.uncalibrated_model
    reporter.log(f"calibrating on {config.pair_list}: masks {labeller.mask_generator.name}, "
                 f"vision-language {model.name}")
    lset = _reduce_all(config, spec, labeller, reporter)
    with reporter.task("search", total=None, unit="fit") as task:
        calibration = calibrate(
            lset, model, spec, config.overlap, config.uncovered, config.unknown,
            config.mode, config.folds, config.seed, log=reporter.log,
            progress=lambda done, total: task.update(completed=done, total=total))
    calibration.fitted_for = {
        **expected_fit(labeller, spec, config.overlap, config.uncovered, config.unknown,
                       config.max_side),
        "labelled_list": str(config.pair_list), "labelled_list_digest":
            list_digest(config.pair_list), "mode_asked": config.mode, "folds": config.folds,
        "seed": config.seed}
    try:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        calibration.save(config.out)
    except OSError as exc:
        raise InputError(config.out, f"cannot write the calibration file ({exc.strerror})") from exc
    report_calibration(calibration, reporter)
    reporter.log(f"calibration -> {config.out}")
    return calibration


def report_calibration(calibration: Calibration, reporter: Reporter) -> None:
    """Before/after cross-validated mIoU per mode, and where the labeller still errs."""
    report = calibration.report
    kept = " (chosen)" if report["chosen"] == "uncalibrated" else ""
    rows = [[f"uncalibrated zero-shot{kept}", f"{report['before']['miou']:.2f}",
             f"{report['before']['coverage']:.1f} %"]]
    for mode, figures in report["modes"].items():
        if mode == "uncalibrated":  # nothing fitted: its held-out figure is the row above
            continue
        chosen = " (chosen)" if mode == report["chosen"] else ""
        rows.append([f"{mode}, held-out{chosen}", f"{figures['miou']:.2f}",
                     f"{figures['coverage']:.1f} %"])
    reporter.table(f"calibration on {report['images']} labelled images "
                   f"({report['folds']}-fold cross-validation)",
                   ["labeller", "mIoU", "coverage"], rows)
    gain = report["after"]["miou"] - report["before"]["miou"]
    reporter.log(f"cross-validated gain: {gain:+.2f} mIoU ({calibration.mode}; templates "
                 f"'{calibration.template_set}', threshold {calibration.background_threshold:g}, "
                 f"temperature {calibration.temperature:g}, few-shot weight "
                 f"{calibration.fewshot_weight:g})")
    if report["after"]["top_confusions"]:
        table = format_confusions(report["after"]["top_confusions"],
                                  "top confusions on the labelled images (held-out, calibrated)")
        reporter.table(table.title, table.columns, table.rows)
        reporter.log(CONFUSION_ADVICE)
    reliability = calibration.reliability
    if reliability and reliability.get("per_class"):
        names = calibration.fitted_for.get("class_names") or [
            str(i) for i in range(len(reliability["per_class"]))]
        shares = ", ".join(f"{name} {100 * value:.0f} %"
                           for name, value in zip(names, reliability["per_class"], strict=False))
        reporter.log(f"pseudo labels right on held-out labelled pixels: {shares} (`zsplg "
                     "train --policy reliability` weights each pixel by this, per confidence)")
