"""Every setting of ``zsplg train`` in one dataclass: the YAML keys, the CLI flags
and the resolved config written into the run folder are all this one list. The
same for ``zsplg predict``. They live apart from the training code so the command
line can read them without loading torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from zsplg.choices import DEFAULT_TARGET_POLICY as DEFAULT_POLICY
from zsplg.choices import TARGET_POLICIES as POLICIES
from zsplg.choices import TRAIN_METHODS as METHODS

# Settings that only change how a run is watched or scheduled, not its result:
# a resumed run may change them without being refused.
RUN_ONLY_KEYS = frozenset({"workers", "log_every", "val_every", "checkpoint_every",
                           "tensorboard", "device", "overwrite", "out", "resume"})


@dataclass
class TrainConfig:
    """Defaults are UniMatch's recipe scaled to one GPU or a CPU."""

    labelled: str = ""
    classes: str = ""
    out: str = ""
    unlabelled: str | None = None
    pseudo_labels: str | None = None
    pseudo_min_confidence: float = 0.0
    pseudo_reliability: str | None = None
    val: str | None = None
    method: str = "unimatch"
    policy: str = DEFAULT_POLICY
    backbone: str = "efficientnet-lite0"
    pretrained: bool = True
    backbone_weights: str | None = None
    crop_size: int = 321
    batch_size: int = 4
    unlabelled_batch_size: int | None = None
    iters: int = 2000
    lr: float = 0.001
    head_lr_multiplier: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    conf_thresh: float = 0.95
    smoothing: float = 0.1
    weight_s1: float = 0.25
    weight_s2: float = 0.25
    weight_fp: float = 0.5
    fp_dropout: float = 0.5
    head_channels: int = 256
    scale_min: float = 0.5
    scale_max: float = 2.0
    accumulate: int = 1
    amp: str = "auto"
    channels_last: bool = True
    seed: int = 0
    workers: int = 2
    val_every: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    val_mode: str = "whole"
    device: str = "auto"
    tensorboard: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        """Fail before any work, naming the setting."""
        for key in ("labelled", "classes", "out"):
            if not getattr(self, key):
                raise ValueError(f"setting {key!r} is required")
        if self.method not in METHODS:
            raise ValueError(f"method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.method != "supervised" and not self.unlabelled:
            raise ValueError(f"method {self.method!r} needs unlabelled images (unlabelled: "
                             "a folder or an image list); or use method: supervised")
        if self.method == "enhanced" and not self.pseudo_labels:
            raise ValueError("method 'enhanced' needs pseudo_labels: the folder written by "
                             "`zsplg label`")
        positive = ("crop_size", "batch_size", "iters", "accumulate", "checkpoint_every",
                    "log_every", "head_channels")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be at least 1, got {getattr(self, key)}")
        if self.unlabelled_batch_size is not None and self.unlabelled_batch_size < 1:
            raise ValueError("unlabelled_batch_size: must be at least 1")
        for key in ("lr", "head_lr_multiplier"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be positive, got {getattr(self, key)}")
        if not 0 <= self.conf_thresh <= 1:
            raise ValueError(f"conf_thresh: must be in [0, 1], got {self.conf_thresh}")
        if not 0 <= self.pseudo_min_confidence < 1:
            raise ValueError("pseudo_min_confidence: must be in [0, 1), got "
                             f"{self.pseudo_min_confidence}")
        if self.pseudo_reliability and not self.pseudo_labels:
            raise ValueError("pseudo_reliability needs pseudo_labels (a `zsplg label` folder)")
        if self.pseudo_min_confidence > 0 and not self.pseudo_labels:
            raise ValueError("pseudo_min_confidence needs pseudo_labels (a `zsplg label` folder)")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing: must be in [0, 1), got {self.smoothing}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError("scale_min/scale_max: need 0 < scale_min <= scale_max")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp: {self.amp!r} is not one of auto, on, off")
        if self.val_mode not in ("whole", "sliding"):
            raise ValueError(f"val_mode: {self.val_mode!r} is not one of whole, sliding")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: {self.device!r} is not one of auto, cpu, cuda")

    @property
    def u_batch_size(self) -> int:
        return self.unlabelled_batch_size or self.batch_size

    @property
    def validation_interval(self) -> int:
        return self.val_every if self.val_every > 0 else max(self.iters // 5, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def result_settings(self) -> dict:
        """The settings a resumed run must share with the interrupted one."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY_KEYS}


def config_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


PREDICT_MODES = ("whole", "sliding")


@dataclass
class PredictConfig:
    """The settings of ``zsplg predict``: one field per option."""

    checkpoint: str
    out: str = "predictions"
    images_dir: str | None = None
    pair_list: str | None = None
    mode: str = "whole"
    window: int = 513
    stride: int | None = None
    overlays: bool = True
    device: str = "auto"

    def validate(self) -> None:
        """Fail before the checkpoint is read, in the words of the command's options."""
        if (self.images_dir is None) == (self.pair_list is None):
            raise ValueError("give either IMAGES_DIR or --list FILE (exactly one)")
        if self.mode not in PREDICT_MODES:
            raise ValueError(f"--mode: {self.mode!r} is not one of {', '.join(PREDICT_MODES)}")
