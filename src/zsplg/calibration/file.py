"""The calibration file: what `zsplg label --calibration FILE` applies, and what
it was fitted for.

A calibration only holds for the class spec, backends and painting rules it
was fitted with (its offsets are per class column, its threshold on one
backend's similarity scale), so the file records them and a run with other
settings is refused with the option to change instead of painting nonsense.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zsplg import __version__
from zsplg.calibration.fewshot import CalibratedModel, FewShotHead
from zsplg.data.classes import ClassSpec
from zsplg.data.errors import InputError
from zsplg.data.labels import atomic_write_text
from zsplg.vl.base import DenseVisionLanguageModel

FORMAT = "zsplg-calibration"
FORMAT_VERSION = 1


class CalibrationError(ValueError):
    """A calibration file that cannot be used for this run."""


@dataclass
class Calibration:
    """What `zsplg label --calibration FILE` applies, and what it was fitted for."""

    mode: str  # "zero-shot", "few-shot", "fused" or "uncalibrated" (the defaults kept)
    templates: list[str]
    template_set: str
    background_threshold: float
    temperature: float
    offsets: list[float]  # one per annotator column: [background or no-class, classes...]
    column_ids: list[int | None]
    fewshot_weight: float = 0.0
    head: dict | None = None
    fitted_for: dict = field(default_factory=dict)  # spec digest, backends, overlap...
    report: dict = field(default_factory=dict)  # CV mIoU before/after, confusions
    # How often the pseudo label is right per (class id, confidence bin), held out
    # (zsplg.calibration.reliability); None in files made before it existed.
    reliability: dict | None = None

    def to_json(self) -> str:
        data = asdict(self)
        if data["reliability"] is None:  # files without a table keep their digest
            del data["reliability"]
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                           "zsplg_version": __version__, **data}, indent=1) + "\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(p, "calibration file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(p, f"not a readable calibration file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(p, "not a zsplg calibration file (made by `zsplg calibrate`)")
        if data.get("format_version") != FORMAT_VERSION:
            raise InputError(p, f"calibration format version {data.get('format_version')} "
                                f"is not supported (expected {FORMAT_VERSION})")
        names = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise InputError(p, f"incomplete calibration file ({exc})") from None

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def fewshot_head(self) -> FewShotHead | None:
        return None if self.head is None else FewShotHead.from_dict(self.head)

    def calibrated_model(self, base: DenseVisionLanguageModel) -> CalibratedModel:
        """`base` scoring masks with this file's offsets and few-shot head."""
        return CalibratedModel(base, self.column_ids, self.offsets, self.fewshot_head(),
                               self.fewshot_weight)

    def summary(self) -> dict:
        """The settings run.json records (the head's weights are summarised by the digest)."""
        return {"digest": self.digest(), "mode": self.mode, "template_set": self.template_set,
                "background_threshold": self.background_threshold,
                "temperature": self.temperature, "fewshot_weight": self.fewshot_weight,
                "offsets": self.offsets}


def spec_digest(spec: ClassSpec) -> str:
    """Names, synonyms, prompts, background and ignore id (not the file's path)."""
    data = spec.to_dict()
    data.pop("source", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def fitted_for(spec: ClassSpec, masks_config: dict, vl_config: dict, overlap: str,
               uncovered: str, unknown: str, max_side: int) -> dict:
    """The settings a calibration is only valid for."""
    return {"class_spec": spec_digest(spec), "class_names": spec.names,
            "masks": masks_config, "vl": vl_config, "overlap": overlap,
            "uncovered": uncovered, "unknown": unknown, "max_side": max_side}


def check_compatible(calibration: Calibration, expected: dict, source: str) -> None:
    """Refuse a calibration fitted for another class spec, backend or painting rule."""
    fitted = calibration.fitted_for
    if fitted.get("class_spec") != expected["class_spec"]:
        raise CalibrationError(
            f"{source}: fitted for another class spec ({', '.join(fitted.get('class_names', []))});"
            " recalibrate with `zsplg calibrate` for these classes")
    for key, what in (("vl", "vision-language backend"), ("masks", "mask generator"),
                      ("overlap", "overlap policy"), ("uncovered", "uncovered policy"),
                      ("unknown", "unknown policy"), ("max_side", "max side")):
        if json.loads(json.dumps(fitted.get(key))) != json.loads(json.dumps(expected[key])):
            raise CalibrationError(
                f"{source}: fitted for another {what} ({_short(fitted.get(key))}, this run uses "
                f"{_short(expected[key])}); recalibrate with `zsplg calibrate` and the same "
                "--masks/--vl options")


def _short(value) -> str:
    if isinstance(value, dict):
        return str(value.get("name", value))
    return str(value)


def load_checked(path: str | Path, expected: dict) -> Calibration:
    """Read a calibration file and refuse it if fitted for other settings."""
    calibration = Calibration.load(path)
    check_compatible(calibration, expected, str(path))
    return calibration
