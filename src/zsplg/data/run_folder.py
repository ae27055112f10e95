"""Reading a finished `zsplg label` folder back: its labels, class spec and images.

`zsplg export` and `zsplg report` both start from a label folder written
earlier, often on another machine or from another working directory. This
module finds what belongs to it (``labels/``, ``run.json``, the class spec
recorded there, the images the run read) and pairs label keys with images or
ground truth, so neither command re-implements those rules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from zsplg.data.classes import ClassInfo, ClassSpec, load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.sources import Sample, list_images, read_pair_list

RUN_FILE = "run.json"
LABELS = "labels"
CONFIDENCE = "confidence"
CALIBRATION_FILE = "calibration.json"  # written by `zsplg label --calibrate-on`


def labels_dir(path: str | PathLike[str]) -> Path:
    """The folder of index PNGs: ``PATH/labels`` for a `zsplg label` output, else PATH."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "label folder not found")
    if not p.is_dir():
        raise InputError(p, "not a folder (expected a `zsplg label` output or a folder of PNGs)")
    return p / LABELS if (p / LABELS).is_dir() else p


def run_root(path: str | PathLike[str]) -> Path:
    """The run folder that holds run.json for PATH (PATH itself or, for PATH/labels, its parent)."""
    p = Path(path)
    if p.name == LABELS and (p.parent / RUN_FILE).is_file():
        return p.parent
    return p


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or one InputError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON in {what}: {exc}") from None


def read_run_info(path: str | PathLike[str]) -> dict[str, Any] | None:
    """The run.json of a label folder, or None when the folder has none."""
    run_file = run_root(path) / RUN_FILE
    if not run_file.is_file():
        return None
    info = read_json(run_file, "run record")
    if not isinstance(info, dict):
        raise InputError(run_file, "expected a JSON object")
    return info


def spec_from_dict(data: Mapping[str, Any], source: str) -> ClassSpec:
    """Rebuild a ClassSpec from its ``to_dict()`` form (run.json ``inputs.classes``)."""
    try:
        classes = tuple(
            ClassInfo(name=str(c["name"]) if isinstance(c, dict) else str(c),
                      synonyms=tuple(c.get("synonyms", ())) if isinstance(c, dict) else (),
                      prompts=tuple(c.get("prompts", ())) if isinstance(c, dict) else ())
            for c in data["classes"])
        background = data.get("background")
        ignore_index = int(data.get("ignore_index", 255))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(source, f"malformed class spec record ({exc})") from None
    if not classes:
        raise InputError(source, "the recorded class spec is empty")
    return ClassSpec(classes=classes, background=background, ignore_index=ignore_index,
                     source=str(data.get("source", source)))


def resolve_spec(path: str | PathLike[str], classes: str | PathLike[str] | None = None,
                 run_info: Mapping[str, Any] | None = None) -> ClassSpec:
    """The class spec: ``classes`` when given, else the one run.json recorded."""
    if classes is not None:
        return load_class_spec(classes)
    info = run_info if run_info is not None else read_run_info(path)
    recorded = (info or {}).get("inputs", {}).get("classes")
    if isinstance(recorded, dict):
        return spec_from_dict(recorded, str(run_root(path) / RUN_FILE))
    raise InputError(path, "no run.json with a class spec here; pass --classes FILE")


def list_label_keys(folder: Path) -> list[str]:
    """Keys (relative path without .png) of every label PNG under folder, sorted.

    Hidden files are skipped, which also skips the temp files of atomic writes.
    """
    keys: list[tuple[tuple[str, ...], str]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(".png"):
                continue
            rel = (base / name).relative_to(folder).with_suffix("")
            keys.append((rel.parts, rel.as_posix()))
    keys.sort()
    return [key for _, key in keys]


def _existing(path_text: str | None, anchors: Iterable[Path]) -> Path | None:
    if not path_text:
        return None
    p = Path(path_text)
    if p.is_absolute():
        return p if p.exists() else None
    for anchor in (Path.cwd(), *anchors):
        if (anchor / p).exists():
            return anchor / p
    return None


def source_samples(images: str | PathLike[str] | None = None,
                   pair_list: str | PathLike[str] | None = None,
                   run_info: Mapping[str, Any] | None = None,
                   run_dir: Path | None = None) -> list[Sample]:
    """Images (and ground truth) for a label folder.

    An explicit folder or pair-list wins; otherwise the source run.json recorded,
    looked up relative to the current folder and then to the run folder's parents
    (the run may have been started elsewhere). Empty when nothing is found.
    """
    if images is not None and pair_list is not None:
        raise ValueError("give either an images folder or a pair-list, not both")
    if images is not None:
        return list_images(images)
    if pair_list is not None:
        return read_pair_list(pair_list)
    recorded = (run_info or {}).get("inputs", {})
    anchors = [] if run_dir is None else [run_dir.parent, run_dir.parent.parent]
    found_list = _existing(recorded.get("pair_list"), anchors)
    if found_list is not None and found_list.is_file():
        return read_pair_list(found_list)
    found_dir = _existing(recorded.get("images_dir"), anchors)
    if found_dir is not None and found_dir.is_dir():
        return list_images(found_dir)
    return []


def match_samples(keys: list[str], samples: list[Sample]) -> dict[str, Sample]:
    """Pair label keys with samples: the same key first, else a unique file-name match.

    The fallback covers a report whose ground-truth list lives in another folder
    than the run's images (key ``a`` against ``JPEGImages/a``).
    """
    by_key = {s.key: s for s in samples}
    by_name: dict[str, list[Sample]] = {}
    for s in samples:
        by_name.setdefault(Path(s.key).name, []).append(s)
    matched: dict[str, Sample] = {}
    for key in keys:
        if key in by_key:
            matched[key] = by_key[key]
            continue
        candidates = by_name.get(Path(key).name, [])
        if len(candidates) == 1:
            matched[key] = candidates[0]
    return matched


# The label run's failure log and a train run's files (`zsplg train` writes them).
ERRORS_FILE = "errors.jsonl"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.jsonl"
CONFIG_FILE = "config.yaml"
