"""The `zsplg` command. Each command is a thin shell over a Python function;
the only job here is arguments, messages and exit codes: bad input ends in
one line naming the file and the problem, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from zsplg.choices import OVERLAP_POLICIES, UNCOVERED_POLICIES
from zsplg.cli.console import console
from zsplg.cli.train import predict_command, train_command
from zsplg.cli.weights import weights_app
from zsplg.data.errors import InputError
from zsplg.runtime.weights import WeightsError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Zero-shot pseudo labels for semi-supervised semantic segmentation.")
app.add_typer(weights_app, name="weights", help="Known model weights: list and fetch.")
app.command("train")(train_command)
app.command("predict")(predict_command)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _typed_params(ctx: typer.Context) -> set[str]:
    """The parameters the user gave on the command line (not left at their defaults).

    Compared by name: typer ships its own copy of click, whose ParameterSource is
    not click's.
    """
    given = ("COMMANDLINE", "ENVIRONMENT")
    return {name for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", None) in given}


@app.command()
def label(
    ctx: typer.Context,
    images_dir: Annotated[Path | None, typer.Argument(help="Folder of images (recursive).")] = None,
    pair_list: Annotated[Path | None, typer.Option("--list", help="Pair-list: 'image \\[label]' a line.")] = None,
    classes: Annotated[Path | None, typer.Option(help="classes.txt or a YAML class spec (required, here or in --config).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (required, here or in --config).")] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="YAML file of settings, keys named like the options (max_side or max-side); options typed here override it.")] = None,
    masks: Annotated[str, typer.Option(help="Mask generator: auto, sam, sam-vit-b/l/h, sam2 (= sam2.1-tiny), sam2.1-small, superpixel. auto: SAM, else SAM 2.1, when its weights are present.")] = "auto",
    vl: Annotated[str, typer.Option(help="Vision-language backend: auto, clip-gem, clip-maskclip, conse, conse-lite0/1/2. auto: CLIP+GEM when its weights are present.")] = "auto",
    sam_checkpoint: Annotated[Path | None, typer.Option(help="Local SAM or SAM 2.1 checkpoint (else the weights cache); its file name picks the model size.")] = None,
    clip_checkpoint: Annotated[Path | None, typer.Option(help="Local OpenAI CLIP ViT-B/16 checkpoint (else the weights cache).")] = None,
    points_per_side: Annotated[int, typer.Option(help="SAM everything-mode grid.")] = 32,
    cache_masks: Annotated[bool, typer.Option(help="Cache masks per image content and settings, so relabelling with other classes or thresholds skips the mask stage.")] = False,
    threshold: Annotated[float | None, typer.Option(help="Background threshold (backend default if unset).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature (backend default if unset).")] = None,
    overlap: Annotated[str, typer.Option(help=f"Overlap policy: {', '.join(OVERLAP_POLICIES)}.")] = "average",
    uncovered: Annotated[str, typer.Option(help=f"Uncovered pixels: {', '.join(UNCOVERED_POLICIES)}.")] = "ignore",
    unknown: Annotated[str, typer.Option(help="Specs without a background class: a mask no class matches becomes 255 (ignore) or its best class (best-class).")] = "ignore",
    min_confidence: Annotated[float, typer.Option(help="Pixels labelled with less confidence become 255 (ignore); the confidence maps keep every value.")] = 0.0,
    max_side: Annotated[int, typer.Option(help="Images are processed at most this long side.")] = 1024,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Relabel a folder made with other settings.")] = False,
    calibration: Annotated[Path | None, typer.Option(help="Calibration file from `zsplg calibrate` (thresholds, offsets, templates, few-shot head).")] = None,
    calibrate_on: Annotated[Path | None, typer.Option(help="Labelled pair-list: calibrate on it first (writes OUT/calibration.json, reused on resume).")] = None,
) -> None:
    """Write OUT/labels/*.png (class ids, 255 = ignore), OUT/confidence/*.png and OUT/run.json."""
    from zsplg.cli.settings import apply_config, load_config, merge_settings
    from zsplg.labeling.run import (
        CONFIG_ALIASES,
        CONFIG_PATH_KEYS,
        ConfigMismatchError,
        LabelConfig,
        run_label,
    )
    from zsplg.masks.sam import SamCheckpointError

    flags = {"images_dir": images_dir, "pair_list": pair_list, "classes": classes, "out": out,
             "masks": masks, "vl": vl, "sam_checkpoint": sam_checkpoint,
             "clip_checkpoint": clip_checkpoint, "points_per_side": points_per_side,
             "cache_masks": cache_masks, "background_threshold": threshold,
             "temperature": temperature, "overlap": overlap, "uncovered": uncovered,
             "unknown": unknown, "min_confidence": min_confidence, "max_side": max_side,
             "device": device, "overwrite": overwrite,
             "calibration": calibration, "calibrate_on": calibrate_on}
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}
    typed = {CONFIG_ALIASES.get(name, name) for name in _typed_params(ctx)}
    try:
        from_file = load_config(config_file, LabelConfig, aliases=CONFIG_ALIASES,
                                path_keys=CONFIG_PATH_KEYS) if config_file else {}
    except InputError as exc:
        _fail(str(exc))
    if typed & {"images_dir", "pair_list"}:  # a source typed here replaces the file's
        from_file = {k: v for k, v in from_file.items() if k not in ("images_dir", "pair_list")}
    settings = merge_settings(flags, typed, from_file)
    if (settings["images_dir"] is None) == (settings["pair_list"] is None):
        _fail("give either IMAGES_DIR or --list PAIRS (exactly one)")
    for key in ("classes", "out"):
        if settings[key] is None:
            _fail(f"missing --{key} (or '{key}:' in a --config file)")
    config = apply_config(LabelConfig, settings)
    out = Path(config.out)
    try:
        info = run_label(config, console,
                         config_file=str(config_file.resolve()) if config_file else None)
    except (InputError, ConfigMismatchError, WeightsError, SamCheckpointError,
            ValueError) as exc:
        _fail(str(exc))
    counts = info["counts"]
    console.print(f"labelled {counts['labelled']}, already done {counts['already_done']}, "
                  f"failed {counts['failed']} -> {out}")
    if counts["failed"]:
        console.print(f"[yellow]failures are listed in {out / 'errors.jsonl'}[/]")


@app.command()
def calibrate(
    pair_list: Annotated[Path, typer.Option("--list", help="Labelled pair-list ('image label' a line).")],
    classes: Annotated[Path, typer.Option(help="classes.txt or a YAML class spec.")],
    out: Annotated[Path, typer.Option(help="Calibration file to write (JSON).")],
    masks: Annotated[str, typer.Option(help="Mask generator, as for `label` (calibrate with the backends you label with).")] = "auto",
    vl: Annotated[str, typer.Option(help="Vision-language backend, as for `label`.")] = "auto",
    mode: Annotated[str, typer.Option(help="auto (best of the three by cross-validated mIoU), zero-shot, few-shot or fused.")] = "auto",
    folds: Annotated[int, typer.Option(help="Cross-validation folds over the labelled images.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold split.")] = 0,
    cache_dir: Annotated[Path | None, typer.Option(help="Keep each labelled image's masks, features and ground truth here, so recalibrating skips them.")] = None,
    sam_checkpoint: Annotated[Path | None, typer.Option(help="Local SAM or SAM 2.1 checkpoint (else the weights cache); its file name picks the model size.")] = None,
    clip_checkpoint: Annotated[Path | None, typer.Option(help="Local OpenAI CLIP ViT-B/16 checkpoint (else the weights cache).")] = None,
    points_per_side: Annotated[int, typer.Option(help="SAM everything-mode grid.")] = 32,
    cache_masks: Annotated[bool, typer.Option(help="Cache masks per image content and settings.")] = False,
    overlap: Annotated[str, typer.Option(help=f"Overlap policy: {', '.join(OVERLAP_POLICIES)}.")] = "average",
    uncovered: Annotated[str, typer.Option(help=f"Uncovered pixels: {', '.join(UNCOVERED_POLICIES)}.")] = "ignore",
    unknown: Annotated[str, typer.Option(help="Specs without a background class: ignore or best-class.")] = "ignore",
    max_side: Annotated[int, typer.Option(help="Images are processed at most this long side.")] = 1024,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Tune threshold, class offsets, prompt templates and a few-shot head on labelled images."""
    from zsplg.calibration.run import CalibrateConfig, CalibrationError, run_calibrate
    from zsplg.masks.sam import SamCheckpointError

    try:
        config = CalibrateConfig(
            pair_list=str(pair_list), classes=str(classes), out=str(out), masks=masks, vl=vl,
            overlap=overlap, uncovered=uncovered, unknown=unknown, max_side=max_side,
            sam_checkpoint=str(sam_checkpoint) if sam_checkpoint else None,
            clip_checkpoint=str(clip_checkpoint) if clip_checkpoint else None,
            points_per_side=points_per_side, cache_masks=cache_masks,
            cache_dir=str(cache_dir) if cache_dir else None, mode=mode, folds=folds, seed=seed,
            device=device)
        run_calibrate(config, console)
    except (InputError, CalibrationError, WeightsError, SamCheckpointError, ValueError) as exc:
        _fail(str(exc))


@app.command("eval")
def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of predicted index PNGs (KEY.png).")],
    pair_list: Annotated[Path, typer.Option("--list", help="Pair-list with ground-truth labels.")],
    classes: Annotated[Path, typer.Option(help="classes.txt or a YAML class spec.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Metrics JSON (default: next to PRED).")] = None,
    confidence_floors: Annotated[str | None, typer.Option(help="For a `zsplg label` folder: also score only pixels at least this confident, e.g. 0.5,0.7,0.9 (with the share kept), to choose --min-confidence.")] = None,
) -> None:
    """mIoU, per-class IoU, pixel accuracy and coverage; JSON plus a confusion CSV."""
    from zsplg.evaluate import evaluate_with_progress

    try:
        floors = [float(v) for v in confidence_floors.split(",")] if confidence_floors else []
    except ValueError:
        _fail(f"--confidence-floors: expected numbers like 0.5,0.7,0.9, got {confidence_floors!r}")
    try:
        metrics, written = evaluate_with_progress(pred, pair_list, classes, json_path, console,
                                                  floors)
    except (InputError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"mIoU {metrics['miou']:.2f}  ->  {written}" if metrics["miou"] is not None
                  else f"no class could be evaluated -> {written}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its outputs.")] = Path("zsplg-demo"),
) -> None:
    """Label and evaluate a small sample made from images that installed packages ship."""
    from zsplg.demo import run_demo

    try:
        run_demo(out, console)
    except (InputError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A `zsplg label` output or folder of index PNGs; a COCO JSON for --to index.")],
    to: Annotated[str, typer.Option("--to", help="coco (one JSON, RLE masks), overlay (blended images), index (COCO JSON -> index PNGs).")],
    out: Annotated[Path, typer.Option(help="COCO JSON file (coco) or output folder (overlay, index).")],
    classes: Annotated[Path | None, typer.Option(help="Class spec (default: the one run.json recorded).")] = None,
    images: Annotated[Path | None, typer.Option(help="Images folder (default: the run's own images).")] = None,
    pair_list: Annotated[Path | None, typer.Option("--list", help="Pair-list of the images instead of a folder.")] = None,
    with_background: Annotated[bool, typer.Option("--with-background", help="coco: export the background class as a category too.")] = False,
    per_component: Annotated[bool, typer.Option("--per-component", help="coco: one annotation per connected region instead of per class.")] = False,
    alpha: Annotated[float, typer.Option(help="overlay: label colour weight, 0..1.")] = 0.5,
    image_format: Annotated[str, typer.Option("--format", help="overlay: jpg or png.")] = "jpg",
) -> None:
    """Convert labels to COCO JSON (RLE) or colour overlays, or COCO JSON back to index PNGs."""
    from zsplg.export import EXPORT_FORMATS, export_coco, export_index, export_overlays

    if to not in EXPORT_FORMATS:
        _fail(f"--to must be one of {', '.join(EXPORT_FORMATS)}, got {to!r}")
    if images is not None and pair_list is not None:
        _fail("give either --images DIR or --list PAIRS, not both")
    try:
        if to == "coco":
            summary = export_coco(source, out, classes, images, pair_list, with_background,
                                  per_component, console)
            console.print(f"{summary['images']} images, {summary['annotations']} annotations, "
                          f"{summary['categories']} categories -> {out}")
            if summary["images"] and not summary["images_with_file"]:
                console.print("[yellow]images not found: file_name is KEY.png; pass --images "
                              "or --list for the real file names[/]")
        elif to == "overlay":
            summary = export_overlays(source, out, images, pair_list, classes, alpha,
                                      image_format, console=console)
            console.print(f"{summary['images']} overlays -> {out}")
        else:
            summary = export_index(source, out, classes, console)
            console.print(f"{summary['images']} index PNGs -> {out}")
    except (InputError, ValueError) as exc:
        _fail(str(exc))
    if summary["failed"]:
        console.print(f"[yellow]{len(summary['failed'])} skipped (listed above)[/]")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A label, eval or train run folder (or an eval JSON).")],
    out: Annotated[Path | None, typer.Option(help="HTML file (default: RUN_DIR/report.html).")] = None,
    images: Annotated[Path | None, typer.Option(help="Images folder (default: the run's own images).")] = None,
    pair_list: Annotated[Path | None, typer.Option("--list", help="Pair-list of the images (its labels are the ground truth).")] = None,
    gt_list: Annotated[Path | None, typer.Option(help="Pair-list whose labels are the ground truth.")] = None,
    classes: Annotated[Path | None, typer.Option(help="Class spec (default: the one run.json recorded).")] = None,
    gallery: Annotated[int, typer.Option(help="Images in the gallery (0 = none).")] = 24,
    thumb_size: Annotated[int, typer.Option(help="Gallery thumbnail long side, pixels.")] = 320,
) -> None:
    """One self-contained HTML page: settings, metrics, charts, heat map, gallery."""
    from zsplg.report.page import ReportOptions, write_report

    if images is not None and pair_list is not None:
        _fail("give either --images DIR or --list PAIRS, not both")
    options = ReportOptions(images=images, pair_list=pair_list, gt_list=gt_list,
                            classes=classes, gallery=gallery, thumb_size=thumb_size)
    try:
        written = write_report(run_dir, out, options, console)
    except (InputError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"report -> {written}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted: finished images are kept; run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()

