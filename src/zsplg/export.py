"""Convert a label folder to COCO JSON (RLE masks) or colour overlays, and COCO back to PNGs.

Index PNGs are what UniMatch-style trainers read, but annotation tools and
COCO-based frameworks want one JSON with RLE masks, and people want to look at
the labels. The COCO layout follows COCO-Stuff, the semantic flavour of COCO:

* one annotation per (image, class), ``iscrowd`` 0, RLE segmentation
  (pycocotools' compressed string), ``area`` and ``bbox`` of that mask;
  ``per_component=True`` splits it into one annotation per 8-connected region
  for tools that expect objects;
* category id = class id, so the ids in the JSON are the pixel values of the
  PNGs; the background class is left out unless asked for (a region of
  "background" is not an object), and the ignore value (255) is never a
  category;
* each image records the pixels that were ignore as ``ignore_mask`` (RLE), an
  extra field that COCO readers skip, so COCO -> index PNG is exact: ignore
  where recorded, the annotated class elsewhere, background where nothing is.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from zsplg import __version__
from zsplg.data.classes import ClassSpec, load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.images import read_image
from zsplg.data.labels import atomic_write_text, read_label, write_label_png
from zsplg.data.overlay import overlay
from zsplg.data.run_folder import (
    labels_dir,
    list_label_keys,
    match_samples,
    read_json,
    read_run_info,
    resolve_spec,
    run_root,
    source_samples,
)
from zsplg.data.sources import Sample
from zsplg.runtime.progress import Reporter, or_silent

EXPORT_FORMATS = ("coco", "overlay", "index")
OVERLAY_FORMATS = ("jpg", "png")


# --------------------------------------------------------------------------- settings


@dataclass
class ExportConfig:
    """The settings of ``zsplg export``: one field per option."""

    source: str
    to: str
    out: str
    classes: str | None = None
    images: str | None = None
    pair_list: str | None = None
    with_background: bool = False
    per_component: bool = False
    alpha: float = 0.5
    image_format: str = "jpg"

    def validate(self) -> None:
        """Fail before any file is read, in the words of the command's options."""
        if self.to not in EXPORT_FORMATS:
            raise ValueError(f"--to must be one of {', '.join(EXPORT_FORMATS)}, got {self.to!r}")
        if self.images is not None and self.pair_list is not None:
            raise ValueError("give either --images DIR or --list PAIRS, not both")
        if self.to == "overlay":
            check_overlay_options(self.alpha, self.image_format)


def check_overlay_options(alpha: float, image_format: str) -> None:
    if image_format not in OVERLAY_FORMATS:
        raise ValueError(f"overlay format must be one of {', '.join(OVERLAY_FORMATS)}, "
                         f"got {image_format!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def run_export(config: ExportConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """The `zsplg export` command: the summary of :func:`export_coco`,
    :func:`export_overlays` or :func:`export_index`, as ``config.to`` says."""
    config.validate()
    if config.to == "coco":
        return export_coco(config.source, config.out, config.classes, config.images,
                           config.pair_list, config.with_background, config.per_component,
                           reporter=reporter)
    if config.to == "overlay":
        return export_overlays(config.source, config.out, config.images, config.pair_list,
                               config.classes, config.alpha, config.image_format,
                               reporter=reporter)
    return export_index(config.source, config.out, config.classes, reporter=reporter)


# --------------------------------------------------------------------------- shared helpers


def _warn(reporter: Reporter, failures: list[dict[str, str]]) -> None:
    for failure in failures[:10]:
        reporter.log(f"skipped {failure['key']}: {failure['error']}", level="warning")
    if len(failures) > 10:
        reporter.log(f"... and {len(failures) - 10} more", level="warning")


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """A bool (H, W) mask as COCO compressed RLE with a JSON-able string ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Any COCO segmentation (polygons, raw or compressed RLE) as a bool (H, W) mask."""
    if isinstance(segmentation, list):  # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles) if rles else None
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        counts = segmentation["counts"]
        rle = {"size": list(segmentation["size"]),
               "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    if rle is None:
        return np.zeros((height, width), dtype=bool)
    mask = mask_utils.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f"mask size {mask.shape} does not match the image ({height}, {width})")
    return mask.astype(bool)


# --------------------------------------------------------------------------- COCO


def label_annotations(label: np.ndarray, spec: ClassSpec, include_background: bool = False,
                      per_component: bool = False) -> list[dict[str, Any]]:
    """COCO annotations (without ids) for one index map.

    One per class present, or one per 8-connected region with ``per_component``.
    """
    annotations = []
    skip = {spec.ignore_index}
    if spec.background is not None and not include_background:
        skip.add(spec.background)
    for class_id in np.unique(label):
        class_id = int(class_id)
        if class_id in skip or class_id >= spec.num_classes:
            continue
        mask = label == class_id
        if per_component:
            # scikit-image loads scipy: only here, so reading ExportConfig stays instant
            from skimage.measure import label as connected_components

            regions, count = connected_components(mask, connectivity=2, return_num=True)
            masks = [regions == i for i in range(1, count + 1)]
        else:
            masks = [mask]
        for region in masks:
            rle = encode_rle(region)
            coded = {**rle, "counts": rle["counts"].encode("ascii")}
            annotations.append({
                "category_id": class_id,
                "segmentation": rle,
                "area": int(mask_utils.area(coded)),
                "bbox": [float(v) for v in mask_utils.toBbox(coded)],
                "iscrowd": 0,
            })
    return annotations


def coco_categories(spec: ClassSpec, include_background: bool = False) -> list[dict[str, Any]]:
    """Categories from the class spec (id = class id); background only when asked for."""
    return [{"id": i, "name": name, "supercategory": "background" if i == spec.background
             else "object"}
            for i, name in enumerate(spec.names)
            if include_background or i != spec.background]


def _file_name(sample: Sample | None, key: str, root: Path | None) -> str:
    if sample is None:
        return f"{key}.png"
    if root is not None:
        try:
            return sample.image.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return Path(key).with_suffix(sample.image.suffix).as_posix()


def _image_root(samples: list[Sample]) -> Path | None:
    """The folder the keys are relative to (image path minus key), when all agree."""
    roots = set()
    for s in samples:
        parts = len(Path(s.key).parts)
        roots.add(s.image.parents[parts - 1] if parts else s.image.parent)
    return roots.pop() if len(roots) == 1 else None


def export_coco(label_dir: str | PathLike[str], out_json: str | PathLike[str],
                classes: str | PathLike[str] | None = None,
                images: str | PathLike[str] | None = None,
                pair_list: str | PathLike[str] | None = None,
                include_background: bool = False, per_component: bool = False,
                reporter: Reporter | None = None) -> dict[str, Any]:
    """Write one COCO JSON for every label PNG in ``label_dir``.

    Images (optional) only decide ``file_name``; sizes come from the labels,
    which always match their images. Returns a summary (counts, failures, path).
    """
    reporter = or_silent(reporter)
    folder = labels_dir(label_dir)
    run_info = read_run_info(label_dir)
    spec = resolve_spec(label_dir, classes, run_info)
    keys = list_label_keys(folder)
    if not keys:
        raise InputError(folder, "no label PNGs found")
    samples = source_samples(images, pair_list, run_info, run_root(label_dir))
    matched = match_samples(keys, samples)
    root = _image_root(samples) if samples else None
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    with reporter.task("coco", total=len(keys)) as task:
        for key in keys:
            path = folder / f"{key}.png"
            try:
                label = read_label(path, num_classes=spec.num_classes,
                                   ignore_index=spec.ignore_index)
            except InputError as exc:
                failures.append({"key": key, "path": str(path), "error": exc.reason})
                task.advance()
                continue
            image_id = len(coco_images) + 1
            entry: dict[str, Any] = {
                "id": image_id, "file_name": _file_name(matched.get(key), key, root),
                "height": int(label.shape[0]), "width": int(label.shape[1]), "key": key}
            ignore = label == spec.ignore_index
            if ignore.any():
                entry["ignore_mask"] = encode_rle(ignore)
            coco_images.append(entry)
            for ann in label_annotations(label, spec, include_background, per_component):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
            task.advance()
    coco = {
        "info": {
            "description": f"zsplg pseudo labels from {folder}",
            "version": __version__,
            "date_created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "contributor": "zsplg",
            "zsplg": {"classes": spec.names, "background": spec.background,
                      "ignore_index": spec.ignore_index,
                      "background_exported": include_background,
                      "annotations": "per-component" if per_component else "per-class"},
        },
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": coco_categories(spec, include_background),
    }
    out = Path(out_json)
    try:
        atomic_write_text(out, json.dumps(coco, separators=(",", ":")) + "\n")
    except OSError as exc:
        raise InputError(out, f"cannot write ({exc.strerror or exc})") from None
    _warn(reporter, failures)
    return {"format": "coco", "out": str(out), "images": len(coco_images),
            "annotations": len(annotations), "categories": len(coco["categories"]),
            "images_with_file": len(matched), "failed": failures}


def _load_coco(path: Path) -> dict[str, Any]:
    coco = read_json(path, "COCO JSON")
    if not isinstance(coco, dict):
        raise InputError(path, "expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise InputError(path, f"missing or malformed '{key}' list")
    return coco


def _class_mapping(path: Path, coco: dict[str, Any], spec: ClassSpec | None,
                   ignore_index: int) -> dict[int, int]:
    """COCO category id -> class id: by name with a spec, else the ids themselves."""
    categories = coco.get("categories") or []
    mapping: dict[int, int] = {}
    if spec is not None:
        by_name = {name.lower(): i for i, name in enumerate(spec.names)}
        for cat in categories:
            name = str(cat.get("name", "")).lower()
            if name not in by_name:
                raise InputError(path, f"category '{cat.get('name')}' (id {cat.get('id')}) "
                                       "is not in the class spec")
            mapping[int(cat["id"])] = by_name[name]
        return mapping
    for cat in categories:
        cat_id = int(cat["id"])
        if not 0 <= cat_id < ignore_index:
            raise InputError(path, f"category id {cat_id} cannot be a class id below the "
                                   f"ignore value {ignore_index}; pass --classes to map names")
        mapping[cat_id] = cat_id
    return mapping


def export_index(coco_json: str | PathLike[str], out_dir: str | PathLike[str],
                 classes: str | PathLike[str] | None = None,
                 reporter: Reporter | None = None) -> dict[str, Any]:
    """COCO JSON -> ``out_dir/<key>.png`` index maps (the labels' own format).

    Pixels: the recorded ``ignore_mask`` -> ignore, annotated -> its class (later
    annotations paint over earlier ones), the rest -> background, or ignore when
    there is no background class. Exact inverse of :func:`export_coco`.
    """
    reporter = or_silent(reporter)
    path = Path(coco_json)
    if path.is_dir():
        raise InputError(path, "expected a COCO JSON file for --to index, got a folder")
    coco = _load_coco(path)
    meta = (coco.get("info") or {}).get("zsplg") or {}
    spec = load_class_spec(classes) if classes is not None else None
    ignore_index = spec.ignore_index if spec else int(meta.get("ignore_index", 255))
    background = spec.background if spec else meta.get("background")
    fill = ignore_index if background is None else int(background)
    mapping = _class_mapping(path, coco, spec, ignore_index)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    out = Path(out_dir)
    written = 0
    failures: list[dict[str, str]] = []
    with reporter.task("index", total=len(coco["images"])) as task:
        for entry in coco["images"]:
            key = str(entry.get("key") or Path(str(entry.get("file_name", ""))).with_suffix(""))
            try:
                height, width = int(entry["height"]), int(entry["width"])
                label = np.full((height, width), fill, dtype=np.uint8)
                for ann in by_image.get(entry.get("id"), []):
                    if ann.get("category_id") not in mapping:
                        raise ValueError(f"annotation {ann.get('id')} has unknown category "
                                         f"{ann.get('category_id')}")
                    mask = decode_segmentation(ann["segmentation"], height, width)
                    label[mask] = mapping[ann["category_id"]]
                if "ignore_mask" in entry:
                    label[decode_segmentation(entry["ignore_mask"], height, width)] = ignore_index
                write_label_png(out / f"{key}.png", label)
                written += 1
            except (KeyError, TypeError, ValueError) as exc:
                failures.append({"key": key, "path": str(path), "error": f"image {key}: {exc}"})
            except OSError as exc:
                raise InputError(out, f"cannot write ({exc.strerror or exc})") from None
            task.advance()
    _warn(reporter, failures)
    return {"format": "index", "out": str(out), "images": written, "failed": failures}


# --------------------------------------------------------------------------- overlays


def read_image_for_label(image_path: Path, label: np.ndarray) -> np.ndarray:
    """The image at its label's size; a mismatch means the wrong image, so it is refused."""
    image = read_image(image_path)
    if image.shape[:2] != label.shape:
        raise InputError(image_path, f"image size {image.shape[0]}x{image.shape[1]} (HxW) does "
                                     f"not match its label {label.shape[0]}x{label.shape[1]}")
    return image


def export_overlays(label_dir: str | PathLike[str], out_dir: str | PathLike[str],
                    images: str | PathLike[str] | None = None,
                    pair_list: str | PathLike[str] | None = None,
                    classes: str | PathLike[str] | None = None, alpha: float = 0.5,
                    image_format: str = "jpg", quality: int = 90,
                    reporter: Reporter | None = None) -> dict[str, Any]:
    """Write ``out_dir/<key>.<jpg|png>``: each image blended with its label colours.

    Images come from ``images``/``pair_list`` or, by default, the source run.json
    recorded. A label without an image, or of another size, is reported and skipped.
    """
    check_overlay_options(alpha, image_format)
    reporter = or_silent(reporter)
    folder = labels_dir(label_dir)
    run_info = read_run_info(label_dir)
    ignore_index = 255
    with contextlib.suppress(InputError):
        ignore_index = resolve_spec(label_dir, classes, run_info).ignore_index
    keys = list_label_keys(folder)
    if not keys:
        raise InputError(folder, "no label PNGs found")
    samples = source_samples(images, pair_list, run_info, run_root(label_dir))
    if not samples:
        raise InputError(folder, "cannot find the images these labels belong to; "
                                 "pass --images DIR or --list PAIRS")
    matched = match_samples(keys, samples)
    out = Path(out_dir)
    written = 0
    failures: list[dict[str, str]] = []
    with reporter.task("overlay", total=len(keys)) as task:
        for key in keys:
            try:
                if key not in matched:
                    raise InputError(folder / f"{key}.png", "no image with this key")
                label = read_label(folder / f"{key}.png", ignore_index=ignore_index)
                image = read_image_for_label(matched[key].image, label)
                blended = Image.fromarray(overlay(image, label, alpha))
                target = out / f"{key}.{image_format}"
                target.parent.mkdir(parents=True, exist_ok=True)
                if image_format == "jpg":
                    blended.save(target, format="JPEG", quality=quality)
                else:
                    blended.save(target, format="PNG")
                written += 1
            except InputError as exc:
                failures.append({"key": key, "path": exc.path, "error": str(exc)})
            except OSError as exc:
                raise InputError(out, f"cannot write ({exc.strerror or exc})") from None
            task.advance()
    _warn(reporter, failures)
    return {"format": "overlay", "out": str(out), "images": written, "failed": failures}
