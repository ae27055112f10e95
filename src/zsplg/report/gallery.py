"""The report's gallery: which images it shows, and their thumbnails.

Only the worst images cannot tell a run that fails everywhere from one that
fails on a few outliers, so the gallery shows the worst, the middle and the
best of the ranked images, and the page lets the reader look at one group.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from zsplg.data.classes import ClassSpec
from zsplg.data.errors import InputError
from zsplg.data.images import image_size, read_image
from zsplg.data.labels import read_label, voc_colormap
from zsplg.data.overlay import overlay
from zsplg.data.sources import Sample
from zsplg.runtime.progress import Reporter, or_silent

GROUPS = ("worst", "median", "best")
UNRANKED = "unranked"


@dataclass
class ImageScore:
    """What the report learnt about one label: its score against ground truth, its doubt."""

    key: str
    miou: float | None = None
    confidence: float | None = None
    has_gt: bool = False


@dataclass
class GalleryItem:
    """One shown image: thumbnails as data URIs, and why the image itself may be missing."""

    score: ImageScore
    group: str
    image_uri: str | None
    pseudo_uri: str
    gt_uri: str | None
    problem: str | None = None


@dataclass
class GalleryFacts:
    """The picked images, how they were ranked, and the classes their thumbnails show."""

    items: list[GalleryItem]
    total: int
    ranked_by: str | None
    any_confidence: bool
    legend: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)

    def count(self, group: str) -> int:
        return sum(1 for item in self.items if item.group == group)


def class_label(class_id: int, spec: ClassSpec | None, ignore_index: int) -> str:
    """A class id as the page names it: its class name, "ignore", or the bare id."""
    if class_id == ignore_index:
        return "ignore"
    if spec is not None and class_id < spec.num_classes:
        return spec.names[class_id]
    return f"class {class_id}" if spec is None else f"id {class_id}"


def rank(scores: Sequence[ImageScore]) -> tuple[list[ImageScore], list[ImageScore], str | None]:
    """(ranked worst first, unranked, what ranks them).

    Ground truth ranks by per-image mIoU; images without it cannot be put on the
    same scale, so they stay unranked. Without any ground truth the labeller's
    own doubt (mean winning-class probability) ranks instead.
    """
    if any(s.has_gt for s in scores):
        ranked = sorted((s for s in scores if s.has_gt),
                        key=lambda s: (s.miou if s.miou is not None else 101.0,
                                       s.confidence is None, s.confidence or 0.0, s.key))
        rest = sorted((s for s in scores if not s.has_gt),
                      key=lambda s: (s.confidence is None, s.confidence or 0.0, s.key))
        return ranked, rest, "mIoU"
    if any(s.confidence is not None for s in scores):
        ranked = sorted((s for s in scores if s.confidence is not None),
                        key=lambda s: (s.confidence, s.key))
        return ranked, [s for s in scores if s.confidence is None], "confidence"
    return [], list(scores), None


def group_sizes(count: int) -> tuple[int, int, int]:
    """(worst, median, best) shares of ``count``: a third each, the rest to worst, then best."""
    base, extra = divmod(count, 3)
    return base + (extra >= 1), base, base + (extra >= 2)


def pick(ranked: Sequence[ImageScore], unranked: Sequence[ImageScore],
         limit: int) -> list[tuple[ImageScore, str]]:
    """The gallery's images and their group, worst to best, at most ``limit``.

    ``limit`` is ``--gallery N``. When more images are ranked than N, the gallery
    takes N/3 from the worst end, N/3 around the median and N/3 from the best
    end (a remainder goes to worst, then best), so one page shows how bad, how
    typical and how good the labels get. When all ranked images fit, each is
    shown and the ranking is cut into thirds. Unranked images (no ground truth
    where others have it) fill whatever room is left.
    """
    n = len(ranked)
    if n <= limit:
        worst, median, best = group_sizes(n)
        picked = [(s, GROUPS[0]) for s in ranked[:worst]]
        picked += [(s, GROUPS[1]) for s in ranked[worst:worst + median]]
        picked += [(s, GROUPS[2]) for s in ranked[worst + median:]]
    else:
        worst, median, best = group_sizes(limit)
        start = max((n - median) // 2, worst)
        picked = [(s, GROUPS[0]) for s in ranked[:worst]]
        picked += [(s, GROUPS[1]) for s in ranked[start:start + median]]
        picked += [(s, GROUPS[2]) for s in ranked[n - best:]] if best else []
    room = max(limit - len(picked), 0)
    return picked + [(s, UNRANKED) for s in unranked[:room]]


def data_uri(rgb: np.ndarray, quality: int = 85) -> str:
    """A JPEG data URI, so the page needs no file beside it."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(image_path: Path | None, label: np.ndarray, gt: np.ndarray | None,
               size: int) -> tuple[str | None, str, str | None, str | None]:
    """(image, pseudo overlay, gt overlay) data URIs and a problem note, at thumbnail size.

    A missing or mismatched image still leaves the label colours to look at.
    """
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
        scale = min(size / max(label.shape), 1)
        dims = (max(1, round(label.shape[1] * scale)), max(1, round(label.shape[0] * scale)))
    else:
        dims = (image.shape[1], image.shape[0])

    def drawn(index_map: np.ndarray) -> np.ndarray:
        small = np.asarray(Image.fromarray(index_map).resize(dims, Image.Resampling.NEAREST))
        return overlay(image, small) if image is not None else voc_colormap()[small]

    gt_uri = data_uri(drawn(gt)) if gt is not None else None
    image_uri = data_uri(image) if image is not None else None
    return image_uri, data_uri(drawn(label)), gt_uri, problem


def build_gallery(scores: Sequence[ImageScore], labels: Path, image_for: dict[str, Sample],
                  gt_for: dict[str, Path], spec: ClassSpec | None, ignore_index: int,
                  limit: int, thumb_size: int,
                  reporter: Reporter | None = None) -> GalleryFacts:
    """Pick the images (see ``pick``) and draw their thumbnails."""
    ranked, unranked, ranked_by = rank(scores)
    picked = pick(ranked, unranked, limit)
    items, present = [], set()
    with or_silent(reporter).task("report thumbnails", total=len(picked)) as task:
        for score, group in picked:
            label = read_label(labels / f"{score.key}.png")
            gt = None
            if score.has_gt and spec is not None:
                gt = read_label(gt_for[score.key], num_classes=spec.num_classes,
                                ignore_index=ignore_index, expected_size=label.shape)
                present.update(int(v) for v in np.unique(gt))
            present.update(int(v) for v in np.unique(label))
            sample = image_for.get(score.key)
            image_uri, pseudo_uri, gt_uri, problem = thumbnails(
                sample.image if sample else None, label, gt, thumb_size)
            items.append(GalleryItem(score, group, image_uri, pseudo_uri, gt_uri, problem))
            task.advance()
    colours = voc_colormap()
    legend = [(class_label(i, spec, ignore_index),
               (int(colours[i][0]), int(colours[i][1]), int(colours[i][2])))
              for i in sorted(present)]
    return GalleryFacts(items=items, total=len(scores), ranked_by=ranked_by,
                        any_confidence=any(s.confidence is not None for s in scores),
                        legend=legend)
