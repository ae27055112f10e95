"""`zsplg calibrate`, and the calibration step of `zsplg label`.

Produces a calibration file from a labelled pair-list with the same backends
`label` will use, prints the honest (cross-validated) gain and the labeller's
top confusions on the labelled images, and applies a file to a Labeller after
checking it was fitted for the same classes, backends and painting rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zsplg.calibration.fewshot import CalibratedModel
from zsplg.calibration.labelled_set import LabelledSet, reduce_sample
from zsplg.calibration.search import (
    MODES,
    Calibration,
    CalibrationError,
    calibrate,
    check_compatible,
    fitted_for,
)
from zsplg.cli.console import make_progress
from zsplg.data.classes import ClassSpec, load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.sources import read_pair_list
from zsplg.labeling.annotate import Annotator, AnnotatorConfig
from zsplg.labeling.run import BackendConfig
from zsplg.metrics import CONFUSION_ADVICE, format_confusions

__all__ = ["CALIBRATION_FILE", "CalibrateConfig", "CalibrationError", "apply_calibration",
           "calibration_summary", "expected_fit", "list_digest", "print_report",
           "run_calibrate", "use_calibration"]
CALIBRATION_FILE = "calibration.json"


@dataclass
class CalibrateConfig(BackendConfig):
    """A `zsplg calibrate` run: the labelled list, the backends and the search."""

    pair_list: str
    classes: str
    out: str
    cache_dir: str | None = None
    mode: str = "auto"
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate_backends()
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.folds < 2:
            raise ValueError("--folds must be at least 2")


def list_digest(pair_list: str | Path) -> str:
    """The labelled list's content (its lines), so a reused file was fitted on the same images."""
    return hashlib.sha256(Path(pair_list).read_bytes()).hexdigest()[:16]


def expected_fit(labeller, spec: ClassSpec, overlap: str, uncovered: str, unknown: str,
                 max_side: int) -> dict:
    """What a calibration must have been fitted for to be used with this labeller."""
    base = getattr(labeller.vl_model, "base", labeller.vl_model)
    return fitted_for(spec, labeller.mask_generator.config(), base.config(), overlap, uncovered,
                      unknown, max_side)


def apply_calibration(labeller, calibration: Calibration, spec: ClassSpec,
                      annotator: AnnotatorConfig) -> None:
    """Make a built Labeller use the calibration: its prompt templates (text
    re-encoded), threshold, temperature, class offsets and few-shot head.

    annotator: the run's painting rules; threshold and temperature are replaced.
    """
    from zsplg.labeling.run import text_prompts

    base = getattr(labeller.vl_model, "base", labeller.vl_model)
    model = CalibratedModel(base, calibration.column_ids, calibration.offsets,
                            calibration.fewshot_head(), calibration.fewshot_weight)
    class_ids, prompts = text_prompts(spec, tuple(calibration.templates))
    if [spec.background, *class_ids] != calibration.column_ids:
        raise CalibrationError("the calibration's class columns do not match the class spec")
    settings = replace(annotator, background_threshold=calibration.background_threshold,
                       temperature=calibration.temperature)
    labeller.vl_model = model
    labeller.annotator = Annotator(model, base.encode_text(prompts), class_ids, spec.background,
                                   settings)


def use_calibration(config, spec: ClassSpec, labeller, console: Console):
    """`zsplg label --calibration FILE` / `--calibrate-on LIST`: returns the run's
    config with the calibration's settings (what run.json records) and applies
    it to the labeller.

    --calibrate-on writes OUT/calibration.json, and reuses it when it was fitted
    on the same list with the same backends (so a resumed run does not redo it).
    """
    expected = expected_fit(labeller, spec, config.overlap, config.uncovered, config.unknown,
                            config.max_side)
    path = config.calibration
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
            console.print(f"using {escape(path)} (fitted on the same labelled list)")
        else:
            run_calibrate(CalibrateConfig(pair_list=config.calibrate_on, classes=config.classes,
                                          out=path, overlap=config.overlap,
                                          uncovered=config.uncovered, unknown=config.unknown,
                                          max_side=config.max_side), console, labeller)
    calibration = load_checked(path, expected)
    for key, value in (("threshold", config.background_threshold),
                       ("temperature", config.temperature)):
        fitted = getattr(calibration, "background_threshold" if key == "threshold" else key)
        if value is not None and abs(value - fitted) > 1e-9:
            raise ValueError(f"--{key} {value:g} conflicts with the calibration's {fitted:g} "
                             f"({path}); leave --{key} out")
    if not config.calibrate_on:
        report = calibration.report
        console.print(f"calibration {escape(str(path))}: {calibration.mode}, cross-validated "
                      f"mIoU {report['before']['miou']:.2f} -> {report['after']['miou']:.2f} "
                      f"on {report['images']} labelled images")
    apply_calibration(labeller, calibration, spec, config.annotator_config())
    return replace(config, calibration=str(path), templates=tuple(calibration.templates),
                   background_threshold=calibration.background_threshold,
                   temperature=calibration.temperature)


def calibration_summary(path: str | Path) -> dict:
    """What run.json's settings record of a calibration file (content digest and values)."""
    return Calibration.load(path).summary()


def _reduce_all(config: CalibrateConfig, spec: ClassSpec, labeller, console: Console):
    samples = read_pair_list(config.pair_list)
    labelled = [s for s in samples if s.label is not None]
    if len(labelled) < 2:
        raise InputError(config.pair_list, f"calibration needs at least 2 lines with a label, "
                                           f"found {len(labelled)}")
    cache_dir = Path(config.cache_dir) if config.cache_dir else None
    images = []
    with make_progress(console) as progress:
        task = progress.add_task("reduce", total=len(labelled))
        for sample in labelled:
            images.append(reduce_sample(sample, labeller.mask_generator, labeller.vl_model,
                                        spec.num_classes, spec.ignore_index, config.max_side,
                                        cache_dir))
            progress.advance(task)
    return LabelledSet(images, spec.num_classes)


def run_calibrate(config: CalibrateConfig, console: Console | None = None,
                  labeller=None) -> Calibration:
    """Reduce the labelled images, calibrate, write the file, print the report."""
    from zsplg.labeling.run import Labeller

    console = console or Console(stderr=True)
    spec = load_class_spec(config.classes)
    read_pair_list(config.pair_list)  # bad lists fail before any model loads
    labeller = labeller or Labeller.from_names(
        spec, config.masks, config.vl, device=config.device, max_side=config.max_side,
        sam_checkpoint=config.sam_checkpoint, clip_checkpoint=config.clip_checkpoint,
        points_per_side=config.points_per_side, cache_masks=config.cache_masks)
    console.print(f"calibrating on {escape(config.pair_list)}: masks "
                  f"[bold]{labeller.mask_generator.name}[/], vision-language "
                  f"[bold]{labeller.vl_model.name}[/]")
    lset = _reduce_all(config, spec, labeller, console)

    def log(message: str) -> None:
        console.print(escape(message))

    with make_progress(console, unit="fit") as bar:
        task = bar.add_task("search", total=None)
        calibration = calibrate(
            lset, labeller.vl_model, spec, config.overlap, config.uncovered, config.unknown,
            config.mode, config.folds, config.seed, log=log,
            progress=lambda done, total: bar.update(task, completed=done, total=total))
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
    print_report(calibration, console)
    console.print(f"calibration -> {escape(str(config.out))}")
    return calibration


def print_report(calibration: Calibration, console: Console) -> None:
    """Before/after cross-validated mIoU per mode, and where the labeller still errs."""
    report = calibration.report
    table = Table(title=f"calibration on {report['images']} labelled images "
                        f"({report['folds']}-fold cross-validation)")
    table.add_column("labeller")
    table.add_column("mIoU", justify="right")
    table.add_column("coverage", justify="right")
    table.add_row("uncalibrated zero-shot", f"{report['before']['miou']:.2f}",
                  f"{report['before']['coverage']:.1f} %")
    for mode, figures in report["modes"].items():
        chosen = " (chosen)" if mode == report["chosen"] else ""
        table.add_row(f"{mode}, held-out{chosen}", f"{figures['miou']:.2f}",
                      f"{figures['coverage']:.1f} %")
    console.print(table)
    gain = report["after"]["miou"] - report["before"]["miou"]
    console.print(f"cross-validated gain: {gain:+.2f} mIoU ({calibration.mode}; templates "
                  f"'{calibration.template_set}', threshold {calibration.background_threshold:g}, "
                  f"temperature {calibration.temperature:g}, few-shot weight "
                  f"{calibration.fewshot_weight:g})")
    if report["after"]["top_confusions"]:
        console.print(format_confusions(
            report["after"]["top_confusions"],
            "top confusions on the labelled images (held-out, calibrated)"))
        console.print(CONFUSION_ADVICE)


def load_checked(path: str | Path, expected: dict) -> Calibration:
    """Read a calibration file and refuse it if fitted for other settings."""
    calibration = Calibration.load(path)
    check_compatible(calibration, expected, str(path))
    return calibration

