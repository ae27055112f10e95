"""`zsplg --help` must not load PyTorch: help should print at once, even on a busy machine."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_leaves_heavy_libraries_unloaded():
    code = ("import sys, zsplg.cli; "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'scipy', 'sam2') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_choices_match_what_the_implementations_accept():
    from zsplg import choices
    from zsplg.labeling.settings import AnnotatorConfig
    from zsplg.train.methods import METHODS
    from zsplg.train.targets import DEFAULT_POLICY, POLICIES

    assert METHODS == choices.TRAIN_METHODS
    assert tuple(POLICIES) == choices.TARGET_POLICIES and DEFAULT_POLICY in POLICIES
    for overlap in choices.OVERLAP_POLICIES:
        AnnotatorConfig(overlap=overlap)
