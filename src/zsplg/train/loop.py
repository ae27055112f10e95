"""The training run: data, model, optimiser, schedule, checkpoints, validation, logs.

Exact resumption is a design constraint, not an afterthought: the data order
comes from :class:`StreamSampler` (a function of the seed and the step), the
augmentation RNG from (seed, epoch, index), and the torch RNG (dropout,
feature perturbation) is re-seeded from (seed, rank, step) before every step.
Nothing random depends on history, so resuming from step k's checkpoint
replays steps k+1... exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from zsplg import IGNORE_INDEX
from zsplg.calibration.file import Calibration
from zsplg.calibration.reliability import check_table, confidence_as_reliability
from zsplg.data.classes import ClassSpec, load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.labels import atomic_write_text
from zsplg.data.run_folder import (
    CALIBRATION_FILE,
    CONFIDENCE,
    CONFIG_FILE,
    HISTORY_FILE,
    LABELS,
    METRICS_FILE,
)
from zsplg.data.sources import Sample, list_images, read_pair_list
from zsplg.metrics import ConfusionMatrix, compute_metrics
from zsplg.runtime.device import resolve_device
from zsplg.runtime.interrupts import Interrupted, stop_requests
from zsplg.runtime.progress import SILENT, Reporter, or_silent
from zsplg.runtime.ranks import Ranks, all_reduce_sum, broadcast_flag
from zsplg.train.checkpoint import load_checkpoint, save_checkpoint
from zsplg.train.config import TrainConfig
from zsplg.train.datasets import LabelledDataset, UnlabelledDataset, ValDataset
from zsplg.train.inference import predict_logits
from zsplg.train.methods import StepSettings, semi_supervised_step, supervised_step
from zsplg.train.model import build_model

LABELLED_STREAM, UNLABELLED_STREAM, MIX_STREAM = 0, 1, 2


class ResumeMismatchError(ValueError):
    """The output folder holds a run made with other settings."""


def labelled_samples(path: str, what: str) -> list[Sample]:
    samples = read_pair_list(path)
    unlabelled = [s for s in samples if s.label is None]
    if unlabelled:
        raise InputError(path, f"{what} list: {len(unlabelled)} line(s) have no label, "
                               f"e.g. {unlabelled[0].image}")
    return samples


def unlabelled_samples(path: str) -> list[Sample]:
    """A folder of images or an image list; labels in the list are not used."""
    p = Path(path)
    return list_images(p) if p.is_dir() else read_pair_list(p)


def pseudo_label_folder(path: str) -> Path:
    """Accept the `zsplg label` output folder or its labels/ subfolder."""
    p = Path(path)
    if not p.is_dir():
        raise InputError(p, "pseudo-label folder not found")
    return p / LABELS if (p / LABELS).is_dir() else p


def match_pseudo_labels(samples: list[Sample], folder: Path) -> tuple[list[Sample], int]:
    """Pair each unlabelled image with its pseudo label.

    By key first (the label run used the same folder or list). When no key
    matches, e.g. the images were labelled from a list and are trained from
    their folder, fall back to the file name where it is unique in both.
    """
    found = sum((folder / f"{s.key}.png").is_file() for s in samples)
    if found == 0:
        by_stem: dict[str, list[Path]] = {}
        for path in folder.rglob("*.png"):
            by_stem.setdefault(path.stem, []).append(path)
        stems = [s.image.stem for s in samples]
        unique_images = {stem for stem in stems if stems.count(stem) == 1}
        remapped = []
        for s in samples:
            paths = by_stem.get(s.image.stem, [])
            if len(paths) == 1 and s.image.stem in unique_images:
                key = str(paths[0].relative_to(folder).with_suffix(""))
                remapped.append(Sample(s.image, s.label, key))
                found += 1
            else:
                remapped.append(s)
        samples = remapped
    if found == 0:
        example = folder / f"{samples[0].key}.png"
        raise InputError(folder, f"no pseudo label for any of the {len(samples)} unlabelled "
                                 f"images (looked for e.g. {example}); run `zsplg label` on "
                                 "the same images or folder first")
    return samples, found


def pseudo_reliability(config: TrainConfig, pseudo_dir: Path, num_classes: int
                       ) -> tuple[dict, str]:
    """The reliability table the ``reliability`` policy weights pseudo labels by, and
    where it came from.

    An explicit pseudo_reliability file must hold a usable table. Otherwise the label
    run's calibration.json (written by `zsplg label --calibrate-on`) is used when it
    has one; without labelled measurements the labeller's confidence stands in.
    """
    if config.pseudo_reliability:
        path = Path(config.pseudo_reliability)
        table = Calibration.load(path).reliability
        why = check_table(table, num_classes)
        if why is not None:
            raise InputError(path, f"{why}; make it with `zsplg calibrate` on labelled images "
                                   "of these classes")
        assert table is not None
        return table, str(path)
    path = pseudo_dir.parent / CALIBRATION_FILE
    if path.is_file():
        table = Calibration.load(path).reliability
        if check_table(table, num_classes) is None:
            assert table is not None
            return table, str(path)
    return confidence_as_reliability(num_classes), "the label run's confidence (no table)"


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * (1 - step / total) ** power


def seed_step(seed: int, rank: int, step: int) -> None:
    state = np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]
    torch.manual_seed(int(state))


def _infinite(loader: DataLoader) -> Iterator[Any]:
    yield from loader  # the sampler is infinite, so this never ends


def _to(batch: Any, device: str, channels_last: bool) -> Any:
    if isinstance(batch, dict):
        return {k: _to(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device, channels_last) for v in batch)
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and channels_last:
            return batch.to(device, non_blocking=True, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=True)
    return batch


class Trainer:
    """One ``zsplg train`` run (one process; under torchrun one per rank)."""

    def __init__(self, config: TrainConfig, reporter: Reporter | None = None) -> None:
        config.validate()
        self.config = config
        self.reporter = or_silent(reporter)
        self.out = Path(config.out)
        self.spec: ClassSpec = load_class_spec(config.classes)
        ranks = Ranks.from_env()
        # checked before the process group is joined, so a missing GPU is one line
        self.device = resolve_device(config.device,
                                     ranks.local_rank if ranks.enabled else None)
        self.ranks = ranks.join(self.device)
        self.use_cuda = self.device.startswith("cuda")
        self.amp_dtype = self._amp_dtype()
        self.channels_last = config.channels_last
        self._load_data()
        self._build_model()

    # ----------------------------------------------------------------- setup
    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.config.amp
        if amp == "off" or (amp == "auto" and not self.use_cuda):
            return None
        if not self.use_cuda:
            raise ValueError("amp: mixed precision needs a CUDA device (use amp: off on CPU)")
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _load_data(self) -> None:
        c = self.config
        self.labelled = labelled_samples(c.labelled, "labelled")
        self.val = labelled_samples(c.val, "validation") if c.val else []
        self.unlabelled = unlabelled_samples(c.unlabelled) if c.unlabelled else []
        self.pseudo_dir: Path | None = None
        self.pseudo_found = 0
        self.reliability: dict | None = None
        self.reliability_source: str | None = None
        if c.method == "enhanced":
            assert c.pseudo_labels is not None
            self.pseudo_dir = pseudo_label_folder(c.pseudo_labels)
            self.unlabelled, self.pseudo_found = match_pseudo_labels(self.unlabelled,
                                                                     self.pseudo_dir)
            if c.policy == "reliability" and not (self.pseudo_dir.parent / CONFIDENCE).is_dir():
                self.reliability_source = "none (no confidence maps: pseudo labels count fully)"
                self.reporter.log(f"no confidence maps beside {self.pseudo_dir} (`zsplg label` "
                                  "writes confidence/): every pseudo-labelled pixel counts "
                                  "fully, as with policy replace", level="warning")
            elif c.policy == "reliability":
                self.reliability, self.reliability_source = pseudo_reliability(
                    c, self.pseudo_dir, self.spec.num_classes)
                if self.reliability_source.startswith("the label run's"):
                    self.reporter.log("no reliability table beside the pseudo labels (made by "
                                      "`zsplg label --calibrate-on` or `zsplg calibrate`): "
                                      "the labeller's confidence is taken as its reliability",
                                      level="warning")
            if self.pseudo_found < len(self.unlabelled):
                self.reporter.log(f"{len(self.unlabelled) - self.pseudo_found} of "
                                  f"{len(self.unlabelled)} unlabelled images have no pseudo "
                                  "label; the teacher alone gives their targets",
                                  level="warning")

    def _build_model(self) -> None:
        c = self.config
        self.model_args = {"backbone": c.backbone, "num_classes": self.spec.num_classes,
                           "fp_dropout": c.fp_dropout, "head_channels": c.head_channels}
        torch.manual_seed(c.seed)  # identical initial heads on every rank
        model = build_model(c.backbone, self.spec.num_classes, pretrained=c.pretrained,
                            weights_path=c.backbone_weights, fp_dropout=c.fp_dropout,
                            head_channels=c.head_channels)
        if self.ranks.enabled and self.use_cuda:
            # SyncBatchNorm needs CUDA; gloo (CPU) runs keep per-process statistics.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=memory_format)
        self.model = model
        self.optimizer = torch.optim.SGD(model.param_groups(c.lr, c.head_lr_multiplier),
                                         lr=c.lr, momentum=c.momentum,
                                         weight_decay=c.weight_decay)
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        if self.ranks.enabled:
            ids = [self.ranks.local_rank] if self.use_cuda else None
            self.train_model: torch.nn.Module = DistributedDataParallel(
                model, device_ids=ids, broadcast_buffers=False)
        else:
            self.train_model = model

    def _loader(self, dataset: Any, batch_size: int, stream: int, start_batch: int) -> Iterator:
        from zsplg.train.sampling import EpochIndexed, StreamSampler

        sampler = StreamSampler(len(dataset), batch_size, self.config.seed, stream,
                                start_batch=start_batch, rank=self.ranks.rank,
                                world_size=self.ranks.world_size)
        # Its own generator: creating the iterator must not draw from the global RNG,
        # which seed_step() owns (else a resumed run's dropout would differ).
        generator = torch.Generator().manual_seed(self.config.seed * 10 + stream)
        loader = DataLoader(EpochIndexed(dataset), batch_size=batch_size, sampler=sampler,
                            num_workers=self.config.workers, pin_memory=self.use_cuda,
                            persistent_workers=False, generator=generator)
        return _infinite(loader)

    def _streams(self, start_step: int) -> tuple[Iterator, Iterator | None, Iterator | None]:
        c = self.config
        start = start_step * c.accumulate
        scale = (c.scale_min, c.scale_max)
        lab = LabelledDataset(self.labelled, c.crop_size, scale_range=scale, seed=c.seed,
                              num_classes=self.spec.num_classes)
        lab_it = self._loader(lab, c.batch_size, LABELLED_STREAM, start)
        if c.method == "supervised":
            return lab_it, None, None
        pseudo = str(self.pseudo_dir) if self.pseudo_dir else None

        def unlabelled(seed: int) -> UnlabelledDataset:
            return UnlabelledDataset(self.unlabelled, c.crop_size, pseudo_label_dir=pseudo,
                                     scale_range=scale, seed=seed,
                                     num_classes=self.spec.num_classes,
                                     min_confidence=c.pseudo_min_confidence,
                                     reliability=self.reliability)

        # The CutMix source is its own stream with its own order and augmentation seed,
        # so a box is pasted from another image, as CutMix intends. UniMatch's unimatch.py
        # differs: it zips the same loader twice (one sampler, one epoch), so its source is
        # the same image in another augmented view.
        return (lab_it,
                self._loader(unlabelled(c.seed), c.u_batch_size, UNLABELLED_STREAM, start),
                self._loader(unlabelled(c.seed + 1), c.u_batch_size, MIX_STREAM, start))

    # ---------------------------------------------------------------- resume
    @property
    def latest_path(self) -> Path:
        return self.out / "checkpoints" / "latest.pt"

    @property
    def best_path(self) -> Path:
        return self.out / "checkpoints" / "best.pt"

    def _resume(self) -> tuple[int, float | None, int | None]:
        if self.ranks.is_main:  # a save cut by kill -9 leaves its temporary file behind
            for stale in self.latest_path.parent.glob(".*.tmp*"):
                stale.unlink(missing_ok=True)
        if self.config.overwrite or not self.latest_path.exists():
            return 0, None, None
        state = load_checkpoint(self.latest_path)
        previous = state.get("config", {})
        ours = self.config.result_settings()
        # a setting added after the run was made counts as its default there
        defaults = TrainConfig().result_settings()
        changed = sorted(k for k in ours if previous.get(k, defaults[k]) != ours[k])
        if changed:
            raise ResumeMismatchError(
                f"{self.latest_path}: this folder holds a run with other settings "
                f"({', '.join(changed)}); use --overwrite to start again, or another --out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return int(state["step"]), state.get("best_miou"), state.get("best_step")

    def _checkpoint_state(self, step: int, best_miou: float | None,
                          best_step: int | None) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": step, "best_miou": best_miou,
                "best_step": best_step, "config": self.config.to_dict(),
                "model_args": self.model_args, "classes": self.spec.to_dict(),
                "class_names": self.spec.names}

    # ------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict | None:
        """mIoU over the validation list, split across ranks and summed."""
        if not self.val:
            return None
        self.model.eval()
        dataset = ValDataset(self.val)
        cm = ConfusionMatrix(self.spec.num_classes)
        for i in range(self.ranks.rank, len(dataset), self.ranks.world_size):
            image, mask, _key = dataset[i]
            image = image.unsqueeze(0).to(self.device)
            with self.autocast():
                logits = predict_logits(self.model, image, self.config.val_mode,
                                        window=self.config.crop_size)
            pred = logits.argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
            cm.update(pred, mask.numpy())
        matrix = all_reduce_sum(torch.from_numpy(cm.matrix.astype(np.int64)))
        return compute_metrics(ConfusionMatrix.from_counts(matrix.numpy()), self.spec.names)

    # ------------------------------------------------------------------ run
    def _write_config(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        resolved = self.config.to_dict()
        resolved["_resolved"] = {"device": self.device, "world_size": self.ranks.world_size,
                                 "amp_dtype": str(self.amp_dtype) if self.amp_dtype else None,
                                 "num_classes": self.spec.num_classes,
                                 "class_names": self.spec.names,
                                 "labelled_images": len(self.labelled),
                                 "unlabelled_images": len(self.unlabelled),
                                 "pseudo_labels_found": self.pseudo_found,
                                 "pseudo_reliability": self.reliability_source,
                                 "val_images": len(self.val)}
        atomic_write_text(self.out / CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False))

    def _history(self, start_step: int) -> Any:
        path = self.out / HISTORY_FILE
        kept: list[str] = []
        if start_step > 0 and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("iter", 0) <= start_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by kill -9
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        return open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in run()

    def _writer(self, start_step: int) -> Any:
        if not self.config.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but keep training if it is absent
            self.reporter.log("tensorboard is not installed; no event files", level="warning")
            return None
        return SummaryWriter(str(self.out / "tensorboard"), purge_step=start_step)

    def _set_lr(self, step: int) -> float:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = poly_lr(group["base_lr"], step, c.iters, c.poly_power)
        return poly_lr(c.lr, step, c.iters, c.poly_power)

    def _one_step(self, step: int, streams: tuple) -> dict[str, float]:
        c = self.config
        lab_it, unl_it, mix_it = streams
        settings = StepSettings(method=c.method, policy=c.policy, conf_thresh=c.conf_thresh,
                                smoothing=c.smoothing, weight_s1=c.weight_s1,
                                weight_s2=c.weight_s2, weight_fp=c.weight_fp)
        seed_step(c.seed, self.ranks.rank, step)
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for micro in range(c.accumulate):
            img_x, mask_x = _to(next(lab_it), self.device, self.channels_last)
            sync = (micro == c.accumulate - 1 or not self.ranks.enabled)
            context = nullcontext() if sync else self.train_model.no_sync()
            with context:
                if c.method == "supervised":
                    loss, micro_logs = supervised_step(self.train_model, img_x, mask_x,
                                                       self.autocast())
                else:
                    u = _to(next(unl_it), self.device, self.channels_last)
                    mix = _to(next(mix_it), self.device, self.channels_last)
                    loss, micro_logs = semi_supervised_step(self.train_model, settings, img_x,
                                                            mask_x, u, mix, self.autocast())
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; "
                                             "lower lr or check the labels")
                self.scaler.scale(loss / c.accumulate).backward()
            for k, v in micro_logs.items():
                logs[k] = logs.get(k, 0.0) + v / c.accumulate
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return logs

    def _step_and_record(self, step: int, streams: tuple, history: Any, writer: Any,
                         best_miou: float | None,
                         best_step: int | None) -> tuple[float | None, int | None]:
        """One step, then its log line, validation and checkpoints as they fall due.

        ``history`` and ``writer`` are None off rank 0, which only trains and validates.
        Returns the best validation mIoU so far and its step.
        """
        c = self.config
        lr = self._set_lr(step)
        logs = self._one_step(step, streams)
        done = step + 1
        main = history is not None
        if main and (done % c.log_every == 0 or done == c.iters):
            record = {"iter": done, "epoch": done * c.batch_size // len(self.labelled),
                      "lr": lr, **logs}
            history.write(json.dumps(record) + "\n")
            history.flush()
            if writer:
                for key, value in record.items():
                    if key not in ("iter", "epoch"):
                        writer.add_scalar(f"train/{key}", value, done)
        if self.val and (done % c.validation_interval == 0 or done == c.iters):
            metrics = self.validate()
            assert metrics is not None
            if main:
                history.write(json.dumps({"iter": done, "val": metrics}) + "\n")
                history.flush()
                miou = metrics["miou"] if metrics["miou"] is not None else 0.0
                if writer:
                    writer.add_scalar("val/miou", miou, done)
                    for cls in metrics["per_class"]:
                        if cls["iou"] is not None:
                            writer.add_scalar(f"val_iou/{cls['name']}", cls["iou"], done)
                if best_miou is None or miou > best_miou:
                    best_miou, best_step = miou, done
                    save_checkpoint(self.best_path,
                                    self._checkpoint_state(done, best_miou, best_step))
                self.reporter.log(f"step {done}: val mIoU {miou:.2f} "
                                  f"(best {best_miou:.2f} at {best_step})")
        if main and (done % c.checkpoint_every == 0 or done == c.iters):
            save_checkpoint(self.latest_path, self._checkpoint_state(done, best_miou, best_step))
        return best_miou, best_step

    def run(self) -> dict:
        """Train to ``iters`` steps (resuming if a checkpoint exists); returns final metrics."""
        c = self.config
        start_step, best_miou, best_step = self._resume()
        main = self.ranks.is_main
        reporter = self.reporter if main else SILENT  # one progress bar, not one per rank
        if main:
            self._write_config()
            history = self._history(start_step)
            writer = self._writer(start_step)
            if start_step:
                reporter.log(f"resuming from step {start_step} ({self.latest_path})")
        self.ranks.barrier()
        streams = self._streams(start_step)
        started = time.time()
        stopped_at: int | None = None
        try:
            with stop_requests() as stop, \
                    reporter.task(f"train {c.method}", total=c.iters, unit="it") as task:
                task.update(completed=start_step)
                for step in range(start_step, c.iters):
                    # every rank stops at the same step, or the next all-reduce would hang
                    if broadcast_flag(stop.requested) if self.ranks.enabled else stop.requested:
                        stopped_at = step
                        break
                    best_miou, best_step = self._step_and_record(
                        step, streams, history if main else None, writer if main else None,
                        best_miou, best_step)
                    task.update(completed=step + 1)
                    self.ranks.barrier()
        finally:
            if main:
                history.close()
                if writer:
                    writer.close()
        if stopped_at is not None:
            if main:
                save_checkpoint(self.latest_path,
                                self._checkpoint_state(stopped_at, best_miou, best_step))
            raise Interrupted(f"interrupted at step {stopped_at} of {c.iters}; "
                              f"{self.latest_path} keeps it; run the same command again "
                              f"to resume")
        result: dict[str, Any] = {"method": c.method, "steps": c.iters,
                                  "seconds_this_session": round(time.time() - started, 2),
                                  "best_miou": best_miou, "best_step": best_step}
        if main:
            final = self._final_metrics()
            result.update(final)
            atomic_write_text(self.out / METRICS_FILE, json.dumps(result, indent=2))
        return result

    def _final_metrics(self) -> dict:
        """The last validation record (the final model), read back from the history."""
        path = self.out / HISTORY_FILE
        last: dict = {}
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "val" in record:
                last = record["val"]
        return last


def train(config: TrainConfig, reporter: Reporter | None = None) -> dict:
    """One training run (resumed when its folder holds one); returns the final metrics.

    Raises ValueError for bad settings (``zsplg.runtime.device.DeviceError`` for an
    unusable device), InputError for bad data files, ResumeMismatchError for a
    folder holding another run, FloatingPointError when the loss diverges.
    """
    return Trainer(config, reporter).run()


__all__ = ["IGNORE_INDEX", "ResumeMismatchError", "Trainer", "train"]
