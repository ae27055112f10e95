"""`zsplg label`: a folder or list of images -> index PNGs, confidences, run.json.

The run is resumable: outputs are written atomically, so an image whose label
and confidence both exist is finished and skipped when the same command is run
again; a run.json whose settings differ from the new command's is refused
unless the user asks to overwrite, so a folder never mixes two configurations.

Calibrating first is composed above this module (`zsplg.pipeline.label`):
a calibrated run gets a labeller from `Labeller.with_calibration`, which
carries what run.json records of the calibration.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from zsplg import IGNORE_INDEX, __version__
from zsplg.data.classes import ClassSpec, load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.labels import (
    atomic_write_text,
    remove_stale_temp_files,
    write_confidence_png,
    write_label_png,
)
from zsplg.data.run_folder import CONFIDENCE, ERRORS_FILE, LABELS, RUN_FILE
from zsplg.data.sources import Sample, missing_files, resolve_sources
from zsplg.labeling.labeller import Labeller
from zsplg.labeling.settings import ConfigMismatchError, LabelConfig, validate_label_config
from zsplg.runtime.device import resolve_device
from zsplg.runtime.interrupts import Interrupted, stop_requests
from zsplg.runtime.progress import Reporter, or_silent
from zsplg.runtime.ranks import Ranks
from zsplg.runtime.versions import library_versions

# Settings that do not change any output: they may differ between a run and its resume.
_NON_OUTPUT_KEYS = ("images_dir", "pair_list", "out", "overwrite", "device", "cache_masks",
                    "calibrate_on")


def _output_settings(config: LabelConfig, calibration: dict | None = None) -> dict:
    settings = asdict(config)
    for key in _NON_OUTPUT_KEYS:
        settings.pop(key, None)
    settings["templates"] = list(config.templates)
    settings["masks"], settings["vl"] = config.backend_names()
    if not settings["masks"].startswith("sam"):
        settings.pop("points_per_side")
    if not config.min_confidence:  # as runs made before the setting existed record it
        settings.pop("min_confidence")
    if calibration is not None:  # its content decides the outputs, not its path
        settings["calibration"] = calibration
    return settings


def _class_content(classes: dict | None) -> dict | None:
    """A recorded class spec without its file name: what the labels depend on."""
    if not isinstance(classes, dict):
        return None
    return {k: v for k, v in classes.items() if k != "source"}


def changed_settings(out: Path, config: LabelConfig, spec: ClassSpec | None = None,
                     calibration: dict | None = None) -> list[str]:
    """Output settings that differ from the ones OUT/run.json records ([] if none is there).

    The class spec is compared by content, not by file name: the same classes
    reached through another path are the same run, and an edited classes file
    at the same path is not. calibration: what run.json records of the
    calibration applied (`Labeller.calibration_summary`).
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
    current = json.loads(json.dumps(_output_settings(config, calibration)))
    if spec is not None:
        previous["classes"] = _class_content(recorded.get("inputs", {}).get("classes"))
        current["classes"] = _class_content(json.loads(json.dumps(spec.to_dict())))
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def check_resume(out: Path, config: LabelConfig, spec: ClassSpec | None = None,
                 calibration: dict | None = None) -> list[str]:
    """Refuse to add to a folder labelled with other settings unless overwriting.

    Returns the changed settings (non-empty only when overwriting).
    """
    changed = changed_settings(out, config, spec, calibration)
    if changed and not config.overwrite:
        raise ConfigMismatchError(
            f"{out / RUN_FILE}: this folder was labelled with other settings "
            f"({', '.join(changed)}); use --overwrite to relabel it, or choose another --out")
    return changed


def _outputs(out: Path, sample: Sample) -> tuple[Path, Path]:
    return out / LABELS / f"{sample.key}.png", out / CONFIDENCE / f"{sample.key}.png"


def _clear_for_overwrite(out: Path, samples: list[Sample], changed: list[str]) -> None:
    """Remove what an --overwrite run replaces, before its run.json is written.

    Otherwise a killed --overwrite run followed by a plain resume would keep the
    old outputs it had not reached yet under the new settings. With changed
    settings every earlier output goes (the folder holds one configuration);
    with the same settings only this run's images are relabelled.
    """
    if changed:
        for sub in (LABELS, CONFIDENCE):
            shutil.rmtree(out / sub, ignore_errors=True)
        return
    for sample in samples:
        for path in _outputs(out, sample):
            path.unlink(missing_ok=True)


def _calibration_of(config: LabelConfig, labeller) -> dict | None:
    """What run.json records of the labeller's calibration; a config asking for one
    must come with a labeller that applies it."""
    summary = getattr(labeller, "calibration_summary", None)
    if (config.calibration or config.calibrate_on) and summary is None:
        raise ValueError("run_label does not apply calibration or calibrate_on: use "
                         "zsplg.pipeline.label, or pass a labeller from "
                         "Labeller.with_calibration")
    return summary


def run_label(config: LabelConfig, reporter: Reporter | None = None,
              labeller: Labeller | None = None, config_file: str | None = None) -> dict:
    """Label every image; failures are reported and recorded, never fatal.

    labeller: already-built backends to use instead of the config's names
        (required when the config names a calibration: see the module docstring).
    config_file: the --config file the settings came from (recorded in run.json).
    Returns what run.json records.
    """
    reporter = or_silent(reporter)
    out = Path(config.out)
    validate_label_config(config)
    calibration = _calibration_of(config, labeller)
    spec = load_class_spec(config.classes)
    samples = resolve_sources(config.images_dir, config.pair_list)
    device = resolve_device(config.device)  # a missing GPU fails before OUT is made
    ranks = Ranks.from_env().join()  # gloo: labelling only needs barriers
    changed = check_resume(out, config, spec, calibration)
    ranks.barrier()  # every rank has compared settings before rank 0 rewrites run.json
    finished = 0 if config.overwrite else sum(
        all(p.exists() for p in _outputs(out, s)) for s in ranks.shard(samples))
    if finished:
        reporter.log(f"resuming: {finished} already done")
    # Models load before OUT is made: missing weights must not leave an empty folder.
    labeller = labeller or Labeller.from_config(config, spec)
    errors_file = ranks.file_name(ERRORS_FILE)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / errors_file).write_text("")  # this run's failures only; retried on resume
        if ranks.is_main:
            remove_stale_temp_files(out)  # left by a killed run; never counted as outputs
    except OSError as exc:
        raise InputError(str(out), f"cannot write to the output folder ({exc.strerror})") from exc

    shard = ranks.shard(samples)
    if config.overwrite and (ranks.is_main or not changed):
        _clear_for_overwrite(out, samples if changed else shard, changed)
    ranks.barrier()
    samples = shard
    reporter.log(f"masks: {labeller.mask_generator.name}, "
                 f"vision-language: {labeller.vl_model.name} "
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
        "settings": _output_settings(config, calibration),
        "inputs": {"images_dir": config.images_dir, "pair_list": config.pair_list,
                   "classes": spec.to_dict()},
        "backends": labeller.describe(),
        "versions": library_versions(),
        "device": device,
        "ignore_index": IGNORE_INDEX,
        "config": {**asdict(config), "templates": list(config.templates)},
        "config_file": config_file,
    }
    if ranks.is_main:
        _write_run(out, run_info, status="running")
    stopped = False
    try:
        with stop_requests() as stop, reporter.task("label", total=len(samples)) as task, \
                (out / errors_file).open("a") as errors:
            for sample in samples:
                if stop.requested:
                    stopped = True
                    break
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
                    reporter.log(f"skipped {message}", level="warning")
                task.advance()
    except KeyboardInterrupt:  # a second signal: the image in hand is dropped
        stopped = True
    if stopped:
        _record_interruption(out, run_info, ranks, len(samples), done, skipped, failures)
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
        run_info = merge_rank_outputs(out, run_info, ranks.world_size)
        _write_run(out, run_info, status="finished")
    ranks.barrier()
    return run_info


def merge_rank_outputs(out: Path, info: dict, world_size: int) -> dict:
    """Rank 0 under torchrun: fold the other ranks' counts and failures into one
    run.json / errors.jsonl, and remove their run.rankR.json / errors.rankR.jsonl."""
    counts = dict(info["counts"])
    failures = list(info["failures"])
    for rank in range(1, world_size):
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


def _record_interruption(out: Path, run_info: dict, ranks: Ranks, total: int, done: int,
                         skipped: int, failures: list[dict]) -> None:
    """Say in run.json where the run stopped, then stop with the resume message."""
    counts = {"images": total, "labelled": done, "already_done": skipped,
              "failed": len(failures)}
    if ranks.is_main:
        remove_stale_temp_files(out)  # a dropped image's half-written file
        _write_run(out, {**run_info, "counts": counts, "failures": failures},
                   status="interrupted")
    raise Interrupted(f"interrupted: {done + skipped} of {total} labelled; run the same "
                      f"command again to resume")


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
