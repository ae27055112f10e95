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
TARGET_POLICIES = ("reliability", "replace", "confident-teacher", "agreement")
# Fixed by design before the three-seed runs (not chosen by any score): it is the one
# policy that uses what the labelled images say about the pseudo labels.
DEFAULT_TARGET_POLICY = "reliability"

CALIBRATION_MODES = ("auto", "zero-shot", "few-shot", "fused", "uncalibrated")
