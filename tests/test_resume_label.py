"""`zsplg label` survives `kill -9`: re-running the same command finishes the job.

The chain test runs the real CLI with the offline backends in subprocesses,
SIGKILLs it at seeded random points once some outputs exist (three times in a
row, each kill landing in a resumed run), then lets the same command finish,
and compares every output byte for byte with an uninterrupted run made in
parallel. Process start-up (imports, model load) costs most of the time, so
the images are tiny and the runs are as few as the guarantees allow.

The other tests drive `run_label` in process with a stand-in labeller whose
output depends on the settings, to check what resuming must refuse and what
`--overwrite` must clear, without loading a model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zsplg.cli import app
from zsplg.data.images import image_size
from zsplg.data.labels import remove_stale_temp_files
from zsplg.labeling.run import run_label
from zsplg.labeling.settings import ConfigMismatchError, LabelConfig

SEED = 20251125
N_IMAGES = 7
KILLS = 3
CLASSES = "background\ncat\ncar\n"
runner = CliRunner()
# One torch thread per run: the uninterrupted run and the chain share two cores, and
# every run must compute with the same thread count for byte-identical outputs.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _make_images(folder: Path, n: int = N_IMAGES, seed: int = 0) -> list[Path]:
    """Tiny photos-to-be: a coloured box on a noisy coloured ground, one in a subfolder."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = np.empty((36, 48, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, 18, 2)
        image[y:y + 14, x:x + 20] = rng.integers(0, 256, 3)
        noise = rng.integers(-15, 16, image.shape)
        image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
        path = folder / ("sub" if i == 3 else "") / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for sub in ("labels", "confidence") if (out / sub).is_dir()
            for p in sorted((out / sub).rglob("*.png"))}


def _temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and ".tmp-" in p.name]


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.png")) if folder.is_dir() else 0


def _all_decode(out: Path) -> None:
    """Every output present is a complete PNG (atomic writes: never half a file)."""
    for sub in ("labels", "confidence"):
        for path in (out / sub).rglob("*.png") if (out / sub).is_dir() else []:
            with Image.open(path) as image:
                image.load()


def _label_command(images: Path, classes: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "zsplg.cli", "label", str(images), "--classes", str(classes),
            "--out", str(out), "--masks", "superpixel", "--vl", "conse", "--max-side", "40",
            *extra]


def _run_and_kill(command: list[str], out: Path, rng: random.Random, log: Path) -> dict:
    """Start the command, SIGKILL it once `wait_for` more outputs exist (a seeded
    random count, in the labels or the confidence folder, plus a random few ms)."""
    watched = out / rng.choice(["labels", "confidence"])
    before = _count(watched)
    target = before + rng.randint(1, 2)
    with log.open("ab") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and _count(watched) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"no progress in {watched}; see {log}")
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.1))
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    return {"watched": watched.name, "target": target, "returncode": process.returncode,
            "labels": _count(out / "labels"), "confidence": _count(out / "confidence"),
            "temp_files": len(_temp_files(out)),
            "pid": process.pid}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    images = root / "images"
    paths = _make_images(images)
    classes = root / "classes.txt"
    classes.write_text(CLASSES)
    reference, out = root / "reference", root / "out"
    log = root / "stderr.log"
    # The uninterrupted run goes on in parallel with the interrupted chain.
    with (root / "reference.log").open("wb") as ref_log:
        ref = subprocess.Popen(_label_command(images, classes, reference),
                               stdout=subprocess.DEVNULL, stderr=ref_log, env=ENV)
    rng = random.Random(SEED)
    command = _label_command(images, classes, out)
    kills = []
    after_first_kill = root / "after-first-kill"
    try:
        for i in range(KILLS):
            kill = _run_and_kill(command, out, rng, log)
            _all_decode(out)
            kill["run_json_status"] = json.loads((out / "run.json").read_text())["status"]
            kills.append(kill)
            if i == 0:
                shutil.copytree(out, after_first_kill)
        # What a kill inside a write leaves behind (a temp file of a dead writer).
        stale = out / "labels" / f".img00.png.tmp-{kills[-1]['pid']}-deadbeef"
        stale.write_bytes(b"half a png")
        labels_before_final = _count(out / "labels")
        final = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    finally:
        ref.wait(timeout=300)
    return SimpleNamespace(root=root, images=images, paths=paths, classes=classes, out=out,
                           reference=reference, kills=kills, final=final, ref=ref,
                           labels_before_final=labels_before_final, stale=stale,
                           after_first_kill=after_first_kill)


@pytest.mark.slow
def test_every_kill_landed_mid_run(chain):
    assert len(chain.kills) == KILLS
    for kill in chain.kills:
        assert kill["returncode"] == -signal.SIGKILL, chain.kills
        assert kill["confidence"] > 0 and kill["labels"] < N_IMAGES, chain.kills
        assert kill["run_json_status"] == "running"
    counts = [k["labels"] for k in chain.kills]
    assert counts == sorted(counts)  # a resumed run never loses finished images


@pytest.mark.slow
def test_resumed_run_finishes_everything(chain):
    assert chain.ref.returncode == 0, (chain.root / "reference.log").read_text()
    assert chain.final.returncode == 0, chain.final.stderr
    run = json.loads((chain.out / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["counts"] == {"images": N_IMAGES, "labelled": N_IMAGES - chain.labels_before_final,
                             "already_done": chain.labels_before_final, "failed": 0}
    assert (chain.out / "errors.jsonl").read_text() == ""
    for path in chain.paths:
        key = path.relative_to(chain.images).with_suffix(".png")
        for sub, mode in (("labels", "P"), ("confidence", "L")):
            with Image.open(chain.out / sub / key) as image:
                image.load()
                assert image.mode == mode
                assert image.size[::-1] == image_size(path)


@pytest.mark.slow
def test_outputs_identical_to_an_uninterrupted_run(chain):
    resumed, reference = _outputs(chain.out), _outputs(chain.reference)
    assert len(reference) == 2 * N_IMAGES
    assert sorted(resumed) == sorted(reference)
    different = [name for name in reference if resumed[name] != reference[name]]
    assert different == []


@pytest.mark.slow
def test_no_temp_files_left(chain):
    assert not chain.stale.exists()
    assert _temp_files(chain.out) == []


@pytest.mark.slow
@pytest.mark.parametrize(("change", "setting"), [(["--threshold", "0.3"], "background_threshold"),
                                                 (["--overlap", "confidence"], "overlap"),
                                                 (["--vl", "conse-lite1"], "vl")])
def test_changed_setting_after_kill_is_refused(chain, tmp_path, change, setting):
    out = tmp_path / "out"
    shutil.copytree(chain.after_first_kill, out)
    before, run_before = _outputs(out), (out / "run.json").read_bytes()
    command = _label_command(chain.images, chain.classes, out, *change)[3:]
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    flat = "".join(result.output.split())
    assert setting in flat and "--overwrite" in flat
    assert "Traceback" not in result.output
    assert _outputs(out) == before
    assert (out / "run.json").read_bytes() == run_before


# --------------------------------------------------------------------------- in process


class StandIn:
    """A labeller whose label is a constant set by the run's threshold; it can
    'die' (KeyboardInterrupt, like Ctrl-C or a kill) after some images."""

    def __init__(self, config: LabelConfig, die_after: int | None = None) -> None:
        self.value = 1 if config.background_threshold is None else 2
        self.die_after = die_after
        self.calls = 0
        self.mask_generator = SimpleNamespace(name="stand-in", config=dict)
        self.vl_model = SimpleNamespace(name="stand-in", config=dict)

    def describe(self) -> dict:
        return {}

    def label_file_reduced(self, path: Path):
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt
        self.calls += 1
        height, width = image_size(path)
        return (np.full((height, width), self.value, np.uint8),
                np.full((height, width), 0.5, np.float32), (height, width))


@pytest.fixture()
def small(tmp_path):
    images = tmp_path / "images"
    _make_images(images, n=5)
    classes = tmp_path / "classes.txt"
    classes.write_text(CLASSES)
    return images, classes


def _label(images, classes, out, die_after=None, **settings):
    config = LabelConfig(classes=str(classes), out=str(out), images_dir=str(images),
                         masks="superpixel", vl="conse", **settings)
    return run_label(config, labeller=StandIn(config, die_after))


def _values(out: Path) -> set[int]:
    return {int(v) for p in (out / "labels").rglob("*.png") for v in np.unique(Image.open(p))}


def test_killed_overwrite_then_plain_resume_never_mixes_settings(small, tmp_path):
    images, classes = small
    out = tmp_path / "out"
    _label(images, classes, out)
    assert _values(out) == {1}
    with pytest.raises(KeyboardInterrupt):
        _label(images, classes, out, die_after=2, background_threshold=0.3, overwrite=True)
    assert _count(out / "labels") == 2  # the old outputs went before the new settings did
    info = _label(images, classes, out, background_threshold=0.3)
    assert info["counts"]["already_done"] == 2 and info["counts"]["labelled"] == 3
    assert _values(out) == {2}


def test_overwrite_with_same_settings_relabels_only_this_runs_images(small, tmp_path):
    images, classes = small
    out = tmp_path / "out"
    _label(images, classes, out)
    extra = out / "labels" / "from-another-list.png"
    shutil.copy(out / "labels" / "img00.png", extra)
    info = _label(images, classes, out, overwrite=True)
    assert info["counts"]["labelled"] == 5
    assert extra.exists()


def test_min_confidence_is_a_setting_and_runs_made_before_it_still_resume(small, tmp_path):
    images, classes = small
    out = tmp_path / "out"
    _label(images, classes, out)
    recorded = json.loads((out / "run.json").read_text())["settings"]
    assert "min_confidence" not in recorded  # the default is recorded as older runs did
    assert _label(images, classes, out, min_confidence=0.0)["counts"]["already_done"] == 5
    with pytest.raises(ConfigMismatchError, match="min_confidence"):
        _label(images, classes, out, min_confidence=0.6)
    info = _label(images, classes, out, min_confidence=0.6, overwrite=True)
    assert info["settings"]["min_confidence"] == 0.6


def test_classes_compared_by_content_not_path(small, tmp_path):
    images, classes = small
    out = tmp_path / "out"
    _label(images, classes, out)
    moved = tmp_path / "elsewhere" / "classes.txt"
    moved.parent.mkdir()
    shutil.copy(classes, moved)
    assert _label(images, moved, out)["counts"]["already_done"] == 5
    classes.write_text("background\ncat\ncar\nbus\n")  # same path, other classes
    with pytest.raises(ConfigMismatchError, match="classes"):
        _label(images, classes, out)


def test_unreadable_run_json_is_refused(small, tmp_path):
    images, classes = small
    out = tmp_path / "out"
    _label(images, classes, out)
    (out / "run.json").write_text("{ not json")
    with pytest.raises(ConfigMismatchError, match="run.json"):
        _label(images, classes, out)


def test_remove_stale_temp_files_spares_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".a.png.tmp-{dead_pid}-0123abcd"
    live = tmp_path / f".b.png.tmp-{os.getpid()}-0123abcd"
    output = tmp_path / "c.png"
    lookalike = tmp_path / "notes.tmp-1-0123abcd"  # not hidden: not ours
    for path in (stale, live, output, lookalike):
        path.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and output.exists() and lookalike.exists()


def test_an_unexpected_error_on_one_image_is_recorded_not_fatal(small, tmp_path):
    images, classes = small
    out = tmp_path / "out"
    config = LabelConfig(classes=str(classes), out=str(out), images_dir=str(images),
                         masks="superpixel", vl="conse")
    labeller = StandIn(config)
    real = labeller.label_file_reduced

    def flaky(path: Path):
        if path.name == "img01.png":
            raise RuntimeError("backend exploded")
        return real(path)

    labeller.label_file_reduced = flaky
    info = run_label(config, labeller=labeller)
    assert info["counts"]["labelled"] == 4 and info["counts"]["failed"] == 1
    (record,) = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert record["path"] == str(images / "img01.png")
    assert record["error"] == f"{images / 'img01.png'}: unexpected RuntimeError: backend exploded"


def test_kill_inside_a_write_then_resume(small, tmp_path):
    """SIGKILL at the worst moment, deterministically: in a child process, right
    after the third label's temp file is written and synced, before its rename.
    The confidence map of that image exists, its label does not, a temp file is
    left; the resumed run must clear the temp file, redo that image and end
    with exactly the outputs of an uninterrupted run."""
    images, classes = small
    out, clean = tmp_path / "out", tmp_path / "clean"
    child = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_resume_label import _label
real = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(os.path.join("labels", "img02.png")):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
_label({str(images)!r}, {str(classes)!r}, {str(out)!r})
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (out / "confidence" / "img02.png").exists()
    assert not (out / "labels" / "img02.png").exists()
    (leftover,) = _temp_files(out)
    assert leftover.parent == out / "labels" and leftover.name.startswith(".img02.png.tmp-")
    info = _label(images, classes, out)
    assert info["counts"] == {"images": 5, "labelled": 3, "already_done": 2, "failed": 0}
    _label(images, classes, clean)
    assert _temp_files(out) == []
    assert _outputs(out) == _outputs(clean)


@pytest.fixture(scope="module")
def sigint(chain):
    """SIGINT (Ctrl-C) a real run once it has labelled an image, then run it again."""
    out = chain.root / "sigint"
    command = _label_command(chain.images, chain.classes, out)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=ENV)
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None and _count(out / "labels") < 1:
            assert time.monotonic() < deadline, "no label written"
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    interrupted_run = json.loads((out / "run.json").read_text())
    labelled = _count(out / "labels")
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    return SimpleNamespace(out=out, returncode=process.returncode, stderr=stderr,
                           run=interrupted_run, labelled=labelled, resumed=resumed)


@pytest.mark.slow
def test_sigint_records_where_the_run_stopped(sigint):
    assert sigint.returncode == 130, sigint.stderr
    assert 1 <= sigint.labelled < N_IMAGES, "the run finished before the signal landed"
    assert sigint.run["status"] == "interrupted"
    counts = sigint.run["counts"]
    assert counts["labelled"] + counts["already_done"] == sigint.labelled
    assert counts["images"] == N_IMAGES
    assert (f"interrupted: {sigint.labelled} of {N_IMAGES} labelled; run the same command "
            f"again to resume") in sigint.stderr
    assert "Traceback" not in sigint.stderr


@pytest.mark.slow
def test_after_sigint_the_same_command_resumes_to_identical_outputs(sigint, chain):
    assert sigint.resumed.returncode == 0, sigint.resumed.stderr
    first_line = sigint.resumed.stderr.splitlines()[0]
    assert first_line == f"resuming: {sigint.labelled} already done"
    assert json.loads((sigint.out / "run.json").read_text())["status"] == "finished"
    assert _outputs(sigint.out) == _outputs(chain.reference)
