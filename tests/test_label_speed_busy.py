"""benchmarks/label_speed.py: its options, and the --busy burners, which run beside the
measurement and never outlive it (a deadline, the end of the phase, or their parent's
death ends each)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def label_speed():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its siblings this way
    try:
        spec = importlib.util.spec_from_file_location("label_speed", BENCHMARKS / "label_speed.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.05)
    return False


def test_options(label_speed):
    smoke = label_speed.parse_args(["--smoke"])
    assert (smoke.images, smoke.points_per_side, smoke.naming_masks, smoke.sam2,
            smoke.synthetic, smoke.long_side) == (1, 4, 5, "none", True, 512)
    assert label_speed.parse_args(["--smoke", "--long-side", "300"]).long_side == 300
    quick = label_speed.parse_args(["--quick"])
    assert (quick.images, quick.points_per_side, quick.long_side, quick.busy) == (1, 16, 1024, 0)
    assert quick.precision is None  # the library's default unless asked
    with pytest.raises(SystemExit):
        label_speed.parse_args(["--busy", "-1"])


def test_missing_list_falls_back_to_synthetic_images(label_speed, tmp_path):
    args = label_speed.parse_args(["--list", str(tmp_path / "absent.txt"), "--images", "2",
                                   "--long-side", "64"])
    images, source = label_speed.load_images(args)
    assert source.startswith("synthetic_images") and len(images) == 2
    assert all(max(im.shape[:2]) == 64 and im.shape[2] == 3 for im in images)


def test_burners_run_for_the_block_only(label_speed):
    with label_speed.Burners(2, 60) as burners:
        pids = [p.pid for p in burners.processes]
        assert len(pids) == 2 and all(running(pid) for pid in pids)
    assert all(not running(pid) for pid in pids)


def test_a_burner_stops_at_its_deadline(label_speed):
    process = subprocess.Popen([sys.executable, "-S", "-c", label_speed._BURNER, "0.3",
                                str(os.getpid())])
    assert process.wait(timeout=20) == 0


def test_a_burner_stops_when_its_parent_dies(label_speed):
    """A benchmark killed outright (no cleanup runs) leaves nothing spinning."""
    parent = ("import os, subprocess, sys\n"
              "p = subprocess.Popen([sys.executable, '-S', '-c', sys.argv[1], '60',"
              " str(os.getpid())])\n"
              "print(p.pid, flush=True)\n"
              "os._exit(0)\n")
    out = subprocess.run([sys.executable, "-S", "-c", parent, label_speed._BURNER],
                         capture_output=True, text=True, timeout=30, check=True)
    assert wait_until_gone(int(out.stdout.strip()))
