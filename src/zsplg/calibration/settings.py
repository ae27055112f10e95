"""The settings of `zsplg calibrate`, importable without PyTorch (the CLI builds
its options from them before any model code loads)."""

from __future__ import annotations

from dataclasses import dataclass

from zsplg.choices import CALIBRATION_MODES
from zsplg.labeling.settings import BackendConfig


@dataclass
class CalibrateConfig(BackendConfig):
    """A `zsplg calibrate` run: the labelled list, the backends and the search."""

    pair_list: str
    classes: str
    out: str
    cache_dir: str | None = None
    mode: str = "auto"
    folds: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate_backends()
        if self.mode not in CALIBRATION_MODES:
            raise ValueError(f"--mode must be one of {', '.join(CALIBRATION_MODES)}, "
                             f"got {self.mode!r}")
        if self.folds < 2:
            raise ValueError("--folds must be at least 2")
