"""The named choices the CLI offers, kept free of heavy imports.

`zsplg --help` builds every command's help text from these; importing them
from the modules that implement them would load PyTorch (about a second, more
on a busy machine) before any help could print.
"""

from __future__ import annotations

OVERLAP_POLICIES = ("small-on-top", "large-on-top", "confidence", "average")
UNCOVERED_POLICIES = ("ignore", "background")
UNKNOWN_POLICIES = ("ignore", "best-class")

TRAIN_METHODS = ("supervised", "unimatch", "enhanced")
TARGET_POLICIES = ("replace", "confident-teacher", "agreement")
DEFAULT_TARGET_POLICY = "replace"  # best in benchmarks/semi_supervised.py (CamVid, see its README)

CALIBRATION_MODES = ("auto", "zero-shot", "few-shot", "fused")
