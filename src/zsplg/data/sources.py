"""Where the images come from: a folder tree or a UniMatch-style pair-list.

Both sources produce :class:`Sample` records whose ``key`` is the image path
relative to the source root without its extension. Outputs are written under
that key, so they mirror the input subfolders and two inputs can never
overwrite each other's labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from zsplg.data.errors import InputError, read_text_input
from zsplg.data.images import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    """One input image, its optional ground-truth label, and its output key."""

    image: Path
    label: Path | None
    key: str


def _key(rel: Path) -> str:
    return str(rel.with_suffix(""))


def list_images(folder: str | PathLike[str]) -> list[Sample]:
    """All images under ``folder`` (recursive, hidden entries skipped), sorted by path."""
    root = Path(folder)
    if not root.exists():
        raise InputError(root, "folder not found")
    if not root.is_dir():
        raise InputError(root, "not a folder")
    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    rels: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in exts:
                rels.append((base / name).relative_to(root))
    if not rels:
        raise InputError(
            root, f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
        )
    rels.sort(key=lambda r: r.parts)
    by_key: dict[str, Path] = {}
    samples: list[Sample] = []
    for rel in rels:
        key = _key(rel)
        if key in by_key:
            raise InputError(
                root,
                f"'{by_key[key]}' and '{rel}' would write the same output '{key}'; "
                f"rename one of them",
            )
        by_key[key] = rel
        samples.append(Sample(image=root / rel, label=None, key=key))
    return samples


def _resolve_entry(base: Path, field: str) -> tuple[Path, Path]:
    """Absolute path of a list entry, and the relative path its key comes from.

    ``base`` must be absolute. Entries outside it keep their whole path (anchor dropped)
    so keys stay unique and can never point outside the output folder.
    """
    full = Path(os.path.normpath(base / field))
    try:
        rel = full.relative_to(base)
    except ValueError:
        rel = Path(*full.parts[1:])
    return full, rel


def read_pair_list(path: str | PathLike[str]) -> list[Sample]:
    """Parse an ``image [label]`` list; paths are relative to the list file's folder.

    Missing files are not checked here (see :func:`missing_files`) so a run can report
    each one and go on with the rest.
    """
    p = Path(path)
    text = read_text_input(p, "list")
    base = Path(os.path.normpath(os.path.abspath(p.parent)))
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        if len(fields) > 2:
            raise InputError(
                p, f"line {lineno}: expected 'image [label]', got {len(fields)} fields"
            )
        image, rel = _resolve_entry(base, fields[0])
        label = _resolve_entry(base, fields[1])[0] if len(fields) == 2 else None
        key = _key(rel)
        if key in seen:
            raise InputError(
                p, f"line {lineno}: output '{key}' already used by line {seen[key]}"
            )
        seen[key] = lineno
        samples.append(Sample(image=image, label=label, key=key))
    if not samples:
        raise InputError(p, "no entries in list")
    return samples


def missing_files(samples: list[Sample], labels: bool = True) -> list[tuple[Sample, str]]:
    """Samples whose image (or, with ``labels``, label) file is absent, each with a reason.

    Labelling only needs the images, so it passes ``labels=False``: a missing
    ground truth must not stop an image from getting its pseudo label.
    """
    out: list[tuple[Sample, str]] = []
    for s in samples:
        problems = []
        if not s.image.is_file():
            problems.append(f"image not found: {s.image}")
        if labels and s.label is not None and not s.label.is_file():
            problems.append(f"label not found: {s.label}")
        if problems:
            out.append((s, "; ".join(problems)))
    return out


def resolve_sources(
    images_dir: str | PathLike[str] | None, pair_list: str | PathLike[str] | None
) -> list[Sample]:
    """Samples from exactly one of an image folder or a pair-list."""
    if (images_dir is None) == (pair_list is None):
        raise ValueError(
            "give exactly one image source: an images folder or a pair-list file"
            + (" (both were given)" if images_dir is not None else " (none was given)")
        )
    if images_dir is not None:
        return list_images(images_dir)
    assert pair_list is not None
    return read_pair_list(pair_list)
