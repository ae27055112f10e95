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


def test_semi_supervised_curve_reads_every_validation_in_the_history(tmp_path):
    """--curve-every's points come from the run's history.jsonl, in order, skipping
    training records and validations without a score."""
    import json

    import semi_supervised

    history = [{"iter": 10, "loss": 1.0},
               {"iter": 50, "val": {"miou": 30.004}},
               {"iter": 100, "val": {"miou": 35.5}},
               {"iter": 150, "val": {"miou": None}},
               {"iter": 200, "val": {"miou": 33.0}}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    assert semi_supervised.curve(tmp_path) == [[50, 30.0], [100, 35.5], [200, 33.0]]
    assert semi_supervised.curve(tmp_path / "missing") == []


def test_semi_supervised_curves_and_paired_gaps_are_over_the_seeds():
    """The row's curve keeps only steps every seed validated; the paired gap pairs
    seed with seed (not means), so a seed missing on one side is left out."""
    import semi_supervised

    curves = [[[100, 20.0], [200, 30.0]], [[100, 22.0], [200, 34.0], [300, 40.0]]]
    assert semi_supervised.curve_mean_sd(curves) == [[100, 21.0, 1.41], [200, 32.0, 2.83]]
    assert semi_supervised.curve_mean_sd([[[100, 20.0]], []]) == []
    assert semi_supervised.mean_sd([31.0]) == (31.0, None)
    row = {"seeds": [{"seed": 0, "miou": 33.0}, {"seed": 1, "miou": 30.0},
                     {"seed": 2, "miou": 40.0}]}
    reference = {"seeds": [{"seed": 0, "miou": 32.0}, {"seed": 1, "miou": 31.0}]}
    paired = semi_supervised.paired_difference(row, reference)
    assert paired == {"per_seed": {0: 1.0, 1: -1.0}, "mean": 0.0, "sd": 1.41}
    assert semi_supervised.paired_difference(row, {"seeds": []}) is None


def test_fewshot_choice_refuses_the_fewshot_knobs_in_zero_shot_mode():
    """The few-shot head's knobs cannot be scored where no head is fitted: one line, 2."""
    import subprocess

    done = subprocess.run([sys.executable, str(Path(fewshot_choice.__file__)), "--choose",
                           "fewshot", "--mode", "zero-shot"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 2
    assert "--mode few-shot or fused" in done.stderr.strip().splitlines()[-1]
