"""The `zsplg` command. Each command is a thin shell over a Python function;
the only job here is arguments, messages and exit codes: bad input ends in
one line naming the file and the problem, never a traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from zsplg.annotate import OVERLAP_POLICIES, UNCOVERED_POLICIES
from zsplg.data.errors import InputError
from zsplg.weights import WeightsError
from zsplg.weights_cli import weights_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Zero-shot pseudo labels for semi-supervised semantic segmentation.")
console = Console(stderr=True)
app.add_typer(weights_app, name="weights", help="Known model weights: list and fetch.")


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@app.command()
def label(
    images_dir: Annotated[Path | None, typer.Argument(help="Folder of images (recursive).")] = None,
    pair_list: Annotated[Path | None, typer.Option("--list", help="Pair-list: 'image \\[label]' a line.")] = None,
    classes: Annotated[Path, typer.Option(help="classes.txt or a YAML class spec.")] = ...,
    out: Annotated[Path, typer.Option(help="Output folder.")] = ...,
    masks: Annotated[str, typer.Option(help="Mask generator: auto, sam, sam-vit-b/l/h, superpixel. auto: SAM when its weights are present.")] = "auto",
    vl: Annotated[str, typer.Option(help="Vision-language backend: auto, clip-gem, clip-maskclip, conse, conse-lite0/1/2. auto: CLIP+GEM when its weights are present.")] = "auto",
    sam_checkpoint: Annotated[Path | None, typer.Option(help="Local SAM checkpoint (else the weights cache).")] = None,
    clip_checkpoint: Annotated[Path | None, typer.Option(help="Local OpenAI CLIP ViT-B/16 checkpoint (else the weights cache).")] = None,
    points_per_side: Annotated[int, typer.Option(help="SAM everything-mode grid.")] = 32,
    cache_masks: Annotated[bool, typer.Option(help="Cache masks per image content and settings, so relabelling with other classes or thresholds skips the mask stage.")] = False,
    threshold: Annotated[float | None, typer.Option(help="Background threshold (backend default if unset).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Softmax temperature (backend default if unset).")] = None,
    overlap: Annotated[str, typer.Option(help=f"Overlap policy: {', '.join(OVERLAP_POLICIES)}.")] = "average",
    uncovered: Annotated[str, typer.Option(help=f"Uncovered pixels: {', '.join(UNCOVERED_POLICIES)}.")] = "ignore",
    unknown: Annotated[str, typer.Option(help="Specs without a background class: a mask no class matches becomes 255 (ignore) or its best class (best-class).")] = "ignore",
    max_side: Annotated[int, typer.Option(help="Images are processed at most this long side.")] = 1024,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Relabel a folder made with other settings.")] = False,
) -> None:
    """Write OUT/labels/*.png (class ids, 255 = ignore), OUT/confidence/*.png and OUT/run.json."""
    from zsplg.labeling import ConfigMismatchError, LabelConfig, run_label
    from zsplg.masks.sam import SamCheckpointError

    if (images_dir is None) == (pair_list is None):
        _fail("give either IMAGES_DIR or --list PAIRS (exactly one)")
    config = LabelConfig(classes=str(classes), out=str(out),
                         images_dir=str(images_dir) if images_dir else None,
                         pair_list=str(pair_list) if pair_list else None, masks=masks, vl=vl,
                         background_threshold=threshold, temperature=temperature,
                         overlap=overlap, uncovered=uncovered, unknown=unknown,
                         max_side=max_side,
                         sam_checkpoint=str(sam_checkpoint) if sam_checkpoint else None,
                         clip_checkpoint=str(clip_checkpoint) if clip_checkpoint else None,
                         points_per_side=points_per_side, cache_masks=cache_masks,
                         device=device, overwrite=overwrite)
    try:
        info = run_label(config, console)
    except (InputError, ConfigMismatchError, WeightsError, SamCheckpointError,
            ValueError) as exc:
        _fail(str(exc))
    counts = info["counts"]
    console.print(f"labelled {counts['labelled']}, already done {counts['already_done']}, "
                  f"failed {counts['failed']} -> {out}")
    if counts["failed"]:
        console.print(f"[yellow]failures are listed in {out / 'errors.jsonl'}[/]")


@app.command("eval")
def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of predicted index PNGs (KEY.png).")],
    pair_list: Annotated[Path, typer.Option("--list", help="Pair-list with ground-truth labels.")],
    classes: Annotated[Path, typer.Option(help="classes.txt or a YAML class spec.")],
    json_path: Annotated[Path | None, typer.Option("--json", help="Metrics JSON (default: next to PRED).")] = None,
) -> None:
    """mIoU, per-class IoU, pixel accuracy and coverage; JSON plus a confusion CSV."""
    from zsplg.evaluate import evaluate_with_progress

    try:
        metrics, written = evaluate_with_progress(pred, pair_list, classes, json_path, console)
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted: finished images are kept; run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()

