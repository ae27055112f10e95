"""The settings of a labelling run, checked before any file is read or model loaded.

A misspelt policy or backend name would otherwise surface only after the
models load, or halfway through a run. Nothing here needs PyTorch (which is
why the annotator's settings live here rather than beside the annotator), so
the command line can build its options and check them before loading models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from zsplg.choices import OVERLAP_POLICIES, UNCOVERED_POLICIES, UNKNOWN_POLICIES
from zsplg.masks import resolve_mask_generator_name
from zsplg.runtime.device import check_device_name, check_precision_name
from zsplg.vl import resolve_vl_name
from zsplg.vl.prompts import DEFAULT_TEMPLATES

# `zsplg label --config FILE`: the CLI flags' spellings accepted as keys besides the
# field names, and the keys holding paths (read relative to the config file).
CONFIG_ALIASES = {"threshold": "background_threshold", "list": "pair_list"}
CONFIG_PATH_KEYS = ("classes", "out", "images_dir", "pair_list", "sam_checkpoint",
                    "clip_checkpoint", "calibration", "calibrate_on")


class ConfigMismatchError(RuntimeError):
    """An output folder holds a run made with other settings."""


@dataclass(frozen=True)
class AnnotatorConfig:
    """How scores become labels.

    background_threshold: the text similarity a visual concept must beat to
        count as a class, else it is background (or ignore when the spec has
        no background). None: the backend's default (its similarity scale is
        its own: CLIP cosines are not MiniLM cosines).
    temperature: softmax temperature over [background, classes...]
        similarities; None: the backend's default.
    overlap: which mask decides a pixel covered by several masks. Default
        "average" (each pixel takes the mean class distribution of the masks
        covering it): it beat "small-on-top" on VOC for every mask setting
        tried (the figures are in benchmarks/README.md).
    uncovered: what a pixel no mask covers becomes.
    unknown: with a class spec that has no background class, what a mask no
        class is similar enough to becomes: "ignore" (255, the paper's rule)
        or "best-class" (its most probable class; the confidence map still
        says how sure). Default "ignore": on CamVid (no background class)
        "best-class" labelled every pixel but scored lower, since below the
        threshold the class ranking is noise. Specs with a background class
        are unaffected.
    min_confidence: covered pixels whose confidence is below this become
        255 (ignore), so a trainer or exporter uses only the labels the
        labeller is sure of (the confidence map keeps every value). 0 keeps all.
    """

    background_threshold: float | None = None
    temperature: float | None = None
    overlap: str = "average"
    uncovered: str = "ignore"
    unknown: str = "ignore"
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAP_POLICIES:
            raise ValueError(f"overlap must be one of {OVERLAP_POLICIES}, got {self.overlap!r}")
        if self.uncovered not in UNCOVERED_POLICIES:
            raise ValueError(f"uncovered must be one of {UNCOVERED_POLICIES}, "
                             f"got {self.uncovered!r}")
        if self.unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {self.unknown!r}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class BackendConfig:
    """The backends and painting rules that `label` and `calibrate` share.

    A calibration is valid only for the values it was fitted with, so both
    commands take them from this one definition (and check them the same way).
    """

    masks: str = "auto"
    vl: str = "auto"
    overlap: str = "average"
    uncovered: str = "ignore"
    unknown: str = "ignore"
    max_side: int = 1024
    sam_checkpoint: str | None = None
    clip_checkpoint: str | None = None
    points_per_side: int = 32
    cache_masks: bool = False
    device: str = "auto"
    # the image encoders' (SAM, SAM 2.1, CLIP); decoding, filters and naming stay fp32
    precision: str = "auto"

    def validate_backends(self) -> None:
        """Names and ranges, checked before any file is read or model loaded."""
        self.backend_names()
        AnnotatorConfig(overlap=self.overlap, uncovered=self.uncovered, unknown=self.unknown)
        if self.max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {self.max_side}")
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side}")
        check_device_name(self.device)
        check_precision_name(self.precision)

    def backend_names(self) -> tuple[str, str]:
        """The mask generator and vision-language backend that `auto` stands for here."""
        return (resolve_mask_generator_name(self.masks, self.sam_checkpoint),
                resolve_vl_name(self.vl, self.clip_checkpoint))


@dataclass
class LabelConfig(BackendConfig):
    """Everything that decides a labelling run's outputs (written to run.json)."""

    classes: str
    out: str
    images_dir: str | None = None
    pair_list: str | None = None
    background_threshold: float | None = None
    temperature: float | None = None
    min_confidence: float = 0.0
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    overwrite: bool = False
    # Applied by zsplg.pipeline.label: a calibration file, or a labelled list to fit one on.
    calibration: str | None = None
    calibrate_on: str | None = None

    def annotator_config(self) -> AnnotatorConfig:
        return AnnotatorConfig(background_threshold=self.background_threshold,
                               temperature=self.temperature, overlap=self.overlap,
                               uncovered=self.uncovered, unknown=self.unknown,
                               min_confidence=self.min_confidence)


def validate_label_config(config: LabelConfig) -> None:
    """Check every setting's value before any file is read or model loaded."""
    config.validate_backends()
    config.annotator_config()  # temperature, min_confidence
    if not config.templates or not all(isinstance(t, str) and "{}" in t
                                       for t in config.templates):
        raise ValueError("templates must be a non-empty list of sentences with a {} "
                         "where the class name goes")
