"""benchmarks/fewshot_choice.py's candidates: each choice changes one setting, and the
defaults it compares include the shipped ones (so the choice can confirm or move them)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fewshot_choice  # noqa: E402

import zsplg.calibration.search as search  # noqa: E402
from zsplg.choices import UNKNOWN_POLICIES  # noqa: E402


def test_every_choice_includes_the_shipped_default():
    fewshot = dict(fewshot_choice.candidates("fewshot"))
    assert f"{search.FEWSHOT_L2:g}/{search.FEWSHOT_WEIGHTING}" in fewshot
    grids = [setting["OFFSET_GRID"] for _, setting in fewshot_choice.candidates("offsets")]
    assert tuple(search.OFFSET_GRID) in [tuple(g) for g in grids]
    unknown = [setting["unknown"] for _, setting in fewshot_choice.candidates("unknown")]
    assert set(unknown) == set(UNKNOWN_POLICIES)


def test_each_candidate_sets_only_its_own_knob():
    for choose, knobs in (("fewshot", {"FEWSHOT_L2", "FEWSHOT_WEIGHTING"}),
                          ("offsets", {"OFFSET_GRID"}), ("unknown", {"unknown"})):
        for _, setting in fewshot_choice.candidates(choose):
            assert set(setting) == knobs
