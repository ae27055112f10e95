"""Every benchmark script imports: a library refactor that moves a name the scripts
use breaks them only when someone next runs a long benchmark, unless this catches it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module(name)
    assert module.__file__ == str(BENCHMARKS / f"{name}.py")
    sys.modules.pop(name, None)


def test_every_script_is_checked() -> None:
    assert len(SCRIPTS) >= 10 and "label_quality" in SCRIPTS
