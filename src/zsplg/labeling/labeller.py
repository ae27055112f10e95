"""One image in, a label map and a confidence map out: masks, features and the annotator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from zsplg.data.classes import ClassSpec
from zsplg.data.images import image_size, read_image
from zsplg.labeling.annotate import Annotation, Annotator
from zsplg.labeling.painting import ScoreColumns
from zsplg.labeling.settings import AnnotatorConfig, LabelConfig
from zsplg.masks import MaskGenerator, build_mask_generator, resolve_mask_generator_name
from zsplg.runtime.device import resolve_device
from zsplg.vl import build_vl_model, resolve_vl_name
from zsplg.vl.base import DenseVisionLanguageModel
from zsplg.vl.prompts import DEFAULT_TEMPLATES, class_prompts


class LabellerCalibration(Protocol):
    """What `Labeller.with_calibration` needs of a calibration.

    `zsplg.calibration.file.Calibration` is one. Calibration comes after
    labelling in the pipeline (it labels its images with a Labeller), so
    labelling knows it only by this shape.
    """

    templates: list[str]
    background_threshold: float
    temperature: float
    column_ids: list[int | None]

    def calibrated_model(self, base: DenseVisionLanguageModel) -> DenseVisionLanguageModel:
        """`base` with the calibration's class offsets and few-shot head."""
        ...

    def summary(self) -> dict:
        """What run.json records of the calibration (its content, not its path)."""
        ...


def text_prompts(spec: ClassSpec, templates: tuple[str, ...]) -> tuple[list[int], list[list[str]]]:
    """Prompt sentences for every class but background, with their ids."""
    class_ids = list(ScoreColumns.of(spec).class_ids)
    prompts = [class_prompts(spec.classes[i].name, spec.classes[i].synonyms,
                             spec.classes[i].prompts, templates) for i in class_ids]
    return class_ids, prompts


class Labeller:
    """Masks + dense features + annotator for one class spec, reusable per image.

    Takes built backends (tests and notebooks pass their own); `from_names`
    builds them the way the CLI does.
    """

    # The calibration this labeller applies, as run.json records it (None: uncalibrated).
    calibration_summary: dict | None = None

    def __init__(self, spec: ClassSpec, mask_generator: MaskGenerator,
                 vl_model: DenseVisionLanguageModel, annotator: AnnotatorConfig | None = None,
                 templates: tuple[str, ...] = DEFAULT_TEMPLATES, max_side: int = 1024) -> None:
        self.spec = spec
        self.max_side = max_side
        self.mask_generator = mask_generator
        self.vl_model = vl_model
        self.uncalibrated_model = vl_model  # what a calibration is fitted for and wraps
        class_ids, prompts = text_prompts(spec, templates)
        text = self.vl_model.encode_text(prompts)
        self.annotator = Annotator(self.vl_model, text, class_ids, spec.background, annotator)

    @classmethod
    def from_names(cls, spec: ClassSpec, masks: str = "auto", vl: str = "auto",
                   annotator: AnnotatorConfig | None = None, device: str = "auto",
                   templates: tuple[str, ...] = DEFAULT_TEMPLATES, max_side: int = 1024,
                   sam_checkpoint: str | None = None, clip_checkpoint: str | None = None,
                   points_per_side: int = 32, cache_masks: bool = False,
                   precision: str = "auto") -> Labeller:
        """precision: the image encoders' (SAM, SAM 2.1, CLIP; see
        zsplg.runtime.device.resolve_precision); other backends ignore it."""
        device = resolve_device(device)
        mask_name = resolve_mask_generator_name(masks, sam_checkpoint)
        sam_options = ({"points_per_side": points_per_side, "precision": precision}
                       if mask_name.startswith("sam") else {})
        mask_generator = build_mask_generator(mask_name, sam_checkpoint, device=device,
                                              cache=cache_masks, **sam_options)
        vl_name = resolve_vl_name(vl, clip_checkpoint)
        vl_options = {"precision": precision} if vl_name.startswith("clip") else {}
        vl_model = build_vl_model(vl_name, device=device, clip_checkpoint=clip_checkpoint,
                                  **vl_options)
        return cls(spec, mask_generator, vl_model, annotator, templates, max_side)

    @classmethod
    def from_config(cls, config: LabelConfig, spec: ClassSpec) -> Labeller:
        return cls.from_names(spec, config.masks, config.vl, config.annotator_config(),
                              config.device, config.templates, config.max_side,
                              config.sam_checkpoint, config.clip_checkpoint,
                              config.points_per_side, config.cache_masks, config.precision)

    def with_calibration(self, calibration: LabellerCalibration,
                         annotator: AnnotatorConfig | None = None) -> Labeller:
        """A labeller that names masks the calibrated way; this one is left unchanged.

        The calibration brings its prompt templates (the text is re-encoded),
        threshold, temperature, class offsets and few-shot head; the masks are
        shared. annotator: the painting rules (default: this labeller's); its
        threshold and temperature are replaced by the calibration's.
        """
        if ScoreColumns.of(self.spec).ids != list(calibration.column_ids):
            raise ValueError("the calibration's class columns do not match the class spec")
        base = self.uncalibrated_model
        settings = replace(annotator or self.annotator.config,
                           background_threshold=calibration.background_threshold,
                           temperature=calibration.temperature)
        calibrated = Labeller(self.spec, self.mask_generator, calibration.calibrated_model(base),
                              settings, tuple(calibration.templates), self.max_side)
        calibrated.uncalibrated_model = base
        calibrated.calibration_summary = calibration.summary()
        return calibrated

    def label_array(self, image: np.ndarray) -> Annotation:
        """RGB uint8 array -> Annotation at the array's size."""
        proposals = self.mask_generator.generate(image)
        features = self.vl_model.encode_image(image)
        return self.annotator.annotate(proposals, features)

    def label_file_reduced(self, path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Image file -> (label, confidence) at the processed size, and the image's
        displayed (height, width) that the written files must have.

        Huge images are read at max_side (JPEGs decode at a reduced scale, so a
        12000 x 9000 photo never exists at full size in memory); the writers in
        zsplg.data.labels scale the 8-bit maps back up (nearest neighbour).
        """
        image = read_image(path, max_side=self.max_side)
        annotation = self.label_array(image)
        return annotation.label, annotation.confidence, image_size(path)

    def label_file(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Image file -> (label, confidence) at the file's own (displayed) size."""
        label, confidence, (height, width) = self.label_file_reduced(path)
        if label.shape != (height, width):
            label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
            confidence = np.asarray(Image.fromarray(confidence).resize((width, height),
                                                                        Image.NEAREST))
        return label, confidence

    def describe(self) -> dict:
        return {"masks": self.mask_generator.config(), "vl": self.vl_model.config(),
                "annotator": self.annotator.resolved_config()}
