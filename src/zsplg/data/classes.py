"""Class specifications: which classes to label and how to prompt for them.

A spec comes from a plain ``.txt`` (one name a line, line index = class id) or
a ``.yaml`` file that can also carry synonyms, complete prompts, the
background class and the ignore index. All problems raise :class:`InputError`
naming the file, so a typo in a spec is reported before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import yaml

from zsplg.data.errors import InputError, read_text_input

_TOP_KEYS = ("classes", "background", "ignore_index")
_CLASS_KEYS = ("name", "synonyms", "prompts")


@dataclass(frozen=True)
class ClassInfo:
    """One class: its name, alternative names for prompt templates, and full prompts."""

    name: str
    synonyms: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassSpec:
    """The ordered class list (index = label id) plus background and ignore ids."""

    classes: tuple[ClassInfo, ...]
    background: int | None
    ignore_index: int = 255
    source: str = ""

    @property
    def names(self) -> list[str]:
        """Class names in id order."""
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        """Number of classes (ids are 0 .. num_classes - 1)."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able view, recorded in run.json so a run can be reproduced."""
        return {
            "source": self.source,
            "classes": [
                {"name": c.name, "synonyms": list(c.synonyms), "prompts": list(c.prompts)}
                for c in self.classes
            ],
            "background": self.background,
            "ignore_index": self.ignore_index,
        }


def load_class_spec(path: str | PathLike[str]) -> ClassSpec:
    """Read a ``.txt`` or ``.yaml``/``.yml`` class spec, validating everything up front."""
    p = Path(path)
    text = read_text_input(p, "class spec")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        return _from_txt(p, text)
    if suffix in (".yaml", ".yml"):
        return _from_yaml(p, text)
    raise InputError(p, f"unsupported class spec extension {p.suffix!r} (use .txt, .yaml or .yml)")


def _is_background(name: str) -> bool:
    return name.strip().lower() == "background"


def _default_background(classes: tuple[ClassInfo, ...]) -> int | None:
    for i, c in enumerate(classes):
        if _is_background(c.name):
            return i
    return None


def _from_txt(p: Path, text: str) -> ClassSpec:
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, line in enumerate(lines):
        if not line:
            raise InputError(p, f"blank line {i + 1} inside the class list (line index = class id)")
    classes = tuple(ClassInfo(name=n) for n in lines)
    return _finish(p, classes, _default_background(classes), 255)


def _str_list(p: Path, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(p, f"'{key}' must be a list of strings")
    out = tuple(v.strip() for v in value)
    if any(not v for v in out):
        raise InputError(p, f"'{key}' contains an empty string")
    return out


def _parse_class(p: Path, i: int, item: Any) -> ClassInfo:
    if isinstance(item, str):
        return ClassInfo(name=item.strip())
    if not isinstance(item, dict):
        raise InputError(p, f"classes[{i}] must be a string or a mapping with 'name'")
    for key in item:
        if key not in _CLASS_KEYS:
            raise InputError(
                p, f"classes[{i}]: unknown key '{key}' (allowed: {', '.join(_CLASS_KEYS)})"
            )
    if "name" not in item:
        raise InputError(p, f"classes[{i}]: missing key 'name'")
    name = item["name"]
    if not isinstance(name, str):
        raise InputError(p, f"classes[{i}]: 'name' must be a string")
    synonyms: tuple[str, ...] = ()
    if "synonyms" in item:
        synonyms = _str_list(p, item["synonyms"], f"classes[{i}].synonyms")
    prompts = _str_list(p, item["prompts"], f"classes[{i}].prompts") if "prompts" in item else ()
    return ClassInfo(name=name.strip(), synonyms=synonyms, prompts=prompts)


def _from_yaml(p: Path, text: str) -> ClassSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(p, f"invalid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise InputError(p, "expected a mapping with a 'classes' key at the top level")
    for key in data:
        if key not in _TOP_KEYS:
            raise InputError(p, f"unknown key '{key}' (allowed: {', '.join(_TOP_KEYS)})")
    if "classes" not in data:
        raise InputError(p, "missing key 'classes'")
    raw = data["classes"]
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise InputError(p, "'classes' must be a list")
    classes = tuple(_parse_class(p, i, item) for i, item in enumerate(raw))

    ignore_index = data.get("ignore_index", 255)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise InputError(p, "'ignore_index' must be an integer")
    if not 0 <= ignore_index <= 255:
        raise InputError(p, f"'ignore_index' must be in 0..255, got {ignore_index}")

    if "background" not in data:
        background = _default_background(classes)
    else:
        background = _resolve_background(p, data["background"], classes)
    return _finish(p, classes, background, ignore_index)


def _resolve_background(p: Path, value: Any, classes: tuple[ClassInfo, ...]) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError(p, "'background' must be an integer id, a class name or null")
    if isinstance(value, int):
        if not 0 <= value < len(classes):
            raise InputError(
                p, f"'background' id {value} out of range (0..{len(classes) - 1})"
            )
        return value
    if isinstance(value, str):
        wanted = value.strip().lower()
        for i, c in enumerate(classes):
            if c.name.lower() == wanted:
                return i
        raise InputError(p, f"'background' names unknown class '{value}'")
    raise InputError(p, "'background' must be an integer id, a class name or null")


def _finish(
    p: Path, classes: tuple[ClassInfo, ...], background: int | None, ignore_index: int
) -> ClassSpec:
    if not classes:
        raise InputError(p, "empty class list")
    seen: dict[str, int] = {}
    for i, c in enumerate(classes):
        if not c.name:
            raise InputError(p, f"class {i} has an empty name")
        low = c.name.lower()
        if low in seen:
            raise InputError(
                p, f"duplicate class name '{c.name}' (ids {seen[low]} and {i})"
            )
        seen[low] = i
    if len(classes) > ignore_index:
        raise InputError(
            p,
            f"{len(classes)} classes but ignore_index is {ignore_index}: "
            f"class ids must be < ignore_index",
        )
    return ClassSpec(
        classes=classes, background=background, ignore_index=ignore_index, source=str(p)
    )
