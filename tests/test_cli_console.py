"""Console output off a terminal never wraps: paths and error lines stay whole in
logs and pipes, whatever the folder's length or the COLUMNS a shell exports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _long_folder(tmp_path: Path, length: int = 150) -> Path:
    folder = tmp_path
    while len(str(folder)) < length:
        folder = folder / "a-rather-long-folder-name"
    folder.mkdir(parents=True)
    return folder


def _zsplg(*args: str | Path, columns: str | None, env_extra: dict | None = None):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "zsplg.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("columns", [None, "40"])
def test_an_error_under_a_long_path_is_one_whole_line(tmp_path, columns):
    missing = _long_folder(tmp_path) / "nowhere"
    result = _zsplg("report", missing, columns=columns)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {missing}: run folder not found"]
    assert not missing.exists()


@pytest.mark.parametrize("columns", [None, "40"])
def test_weights_list_piped_keeps_every_path_whole(tmp_path, columns):
    cache = _long_folder(tmp_path)
    table = _zsplg("weights", "list", columns=columns,
                   env_extra={"ZSPLG_WEIGHTS_DIR": str(cache)})
    assert table.returncode == 0, table.stderr
    assert str(cache) in table.stdout


def test_version():
    from zsplg import __version__

    result = _zsplg("--version", columns=None)
    assert result.returncode == 0
    assert result.stdout.strip() == f"zsplg {__version__}"
