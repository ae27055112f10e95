"""The bad-input suite: every file a real dataset throws at `zsplg label` and
`zsplg eval`, generated here, through the CLI with the real offline backends.

Unreadable inputs (zero bytes, a truncated JPEG, text named .png, a missing
list entry, broken ground truth) must each give one line naming the file and
the problem, a record in the errors file, and leave the rest of the run done.
Unusual but valid inputs (CMYK, 16-bit, RGBA, EXIF-rotated, 8x8, 12000x9000)
must be labelled correctly: each is compared with an upright 8-bit RGB "twin"
holding the pixels it should decode to, whose label must be identical.
Mistakes that make the whole run meaningless (duplicate or no classes, an
output folder that cannot be made) stop before any work, with exit code 2 and
no traceback.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from cli_helpers import invoke, squash
from PIL import Image

import zsplg.labeling.labeller as labeling
from zsplg.cli.settings import apply_config, load_config, merge_settings, validate_config
from zsplg.data.errors import InputError
from zsplg.data.images import read_image
from zsplg.labeling.settings import LabelConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_vl_backend")]

CLASSES = ["background", "cat", "car", "cup"]
ALLOWED = {0, 1, 2, 3, 255}
MAX_SIDE = "40"
FAILING = {  # file -> words its error must contain
    "zero.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text.png": "not an image",
}
VALID = ["cmyk", "deep16", "rgba", "exif", "tiny"]


def _scene(height: int, width: int) -> np.ndarray:
    """Two flat regions and a box: enough structure for superpixels to follow."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 3] = (220, 40, 40)
    image[:, width // 3:] = (40, 90, 200)
    image[height // 4: height // 2, width // 2: width - 4] = (240, 230, 60)
    return image


def _twin(source: Path, twin: Path, intended: np.ndarray, tolerance: int) -> None:
    """Save what ``source`` decodes to as a plain RGB PNG, after checking it is the
    intended picture (within ``tolerance``, for JPEG's loss)."""
    decoded = read_image(source)
    assert decoded.shape == intended.shape, source
    assert np.abs(decoded.astype(int) - intended.astype(int)).max() <= tolerance, source
    Image.fromarray(decoded).save(twin)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    images, twins = root / "images", root / "images" / "twins"
    twins.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")

    (images / "zero.jpg").write_bytes(b"")
    whole = images / "whole.jpg"
    Image.fromarray(_scene(48, 64)).save(whole, quality=90)
    data = whole.read_bytes()
    whole.unlink()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "text.png").write_text("id,name\n1,cat\n")

    scene = _scene(36, 48)
    # CMYK: ink = 255 - colour, no black; the colours decode back (JPEG loss aside).
    cmyk = np.concatenate([255 - scene, np.zeros((36, 48, 1), np.uint8)], axis=2)
    Image.fromarray(cmyk, mode="CMYK").save(images / "cmyk.jpg", quality=95, subsampling=0)
    _twin(images / "cmyk.jpg", twins / "cmyk.png", scene, tolerance=40)
    # 16-bit grayscale: v * 257 is v in 8 bits, exactly.
    gray = scene.mean(axis=2).astype(np.uint8)
    Image.fromarray(gray.astype(np.uint16) * 257).save(images / "deep16.png")
    with Image.open(images / "deep16.png") as check:
        assert check.mode.startswith("I;16") or check.mode == "I"
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(twins / "deep16.png")
    # RGBA, half transparent: the colour channels are the picture.
    alpha = np.full((36, 48, 1), 255, np.uint8)
    alpha[:, 24:] = 0
    Image.fromarray(np.concatenate([scene, alpha], axis=2), mode="RGBA").save(images / "rgba.png")
    Image.fromarray(scene).save(twins / "rgba.png")
    # EXIF orientation 6: stored 48 wide x 36 high, displayed 36 wide x 48 high,
    # the stored left (red) third on top.
    stored = Image.fromarray(scene)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(images / "exif.jpg", exif=exif, quality=95, subsampling=0)
    upright = np.ascontiguousarray(np.rot90(scene, k=-1))
    _twin(images / "exif.jpg", twins / "exif.png", upright, tolerance=40)
    Image.fromarray(_scene(8, 8)).save(images / "tiny.png")
    return root


@pytest.fixture(scope="module")
def labelled(workspace):
    out = workspace / "out"
    result = invoke("label", workspace / "images", "--classes", workspace / "classes.txt",
                    "--out", out, "--masks", "superpixel", "--vl", "conse", "--max-side",
                    MAX_SIDE)
    return result, out


def _label(out: Path, key: str) -> np.ndarray:
    with Image.open(out / "labels" / f"{key}.png") as image:
        assert image.mode == "P"
        return np.array(image)


# --------------------------------------------------------------------------- label: images


def test_run_completes_and_reports_each_bad_file(labelled, workspace):
    result, out = labelled
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    records = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}
    assert sorted(by_name) == sorted(FAILING)
    for name, words in FAILING.items():
        record = by_name[name]
        assert record["path"] == str(workspace / "images" / name)
        assert words in record["error"] and name in record["error"]
        assert squash(record["error"]) in squash(result.output)  # the same line on the console
        assert not (out / "labels" / Path(name).with_suffix(".png")).exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    valid = len(VALID) + 4  # and the four twins
    assert run["counts"] == {"images": valid + len(FAILING), "labelled": valid,
                             "already_done": 0, "failed": len(FAILING)}


@pytest.mark.parametrize("key", VALID)
def test_valid_oddities_are_labelled_at_their_displayed_size(labelled, workspace, key):
    _, out = labelled
    source = next((workspace / "images").glob(f"{key}.*"))
    height, width = read_image(source).shape[:2]
    label = _label(out, key)
    assert label.shape == (height, width)
    assert set(np.unique(label).tolist()) <= ALLOWED
    with Image.open(out / "confidence" / f"{key}.png") as confidence:
        assert confidence.mode == "L" and confidence.size == (width, height)
        # Superpixels cover every pixel: the winner of 4 classes has >= 1/4.
        assert np.array(confidence).min() >= 255 // len(CLASSES) - 1


@pytest.mark.parametrize("key", ["cmyk", "deep16", "rgba", "exif"])
def test_valid_oddities_get_the_label_of_their_upright_rgb_twin(labelled, key):
    _, out = labelled
    np.testing.assert_array_equal(_label(out, key), _label(out, f"twins/{key}"))


def test_exif_label_is_in_displayed_orientation(labelled):
    _, out = labelled
    assert _label(out, "exif").shape == (48, 36)  # stored 36 high x 48 wide


def test_huge_image_bounded_memory(workspace, tmp_path):
    """12000 x 9000 is decoded at a reduced scale (JPEG draft) and its 8-bit maps
    are scaled up only when written. numpy allocations are traced; a full-size
    decode, a float confidence map or int64 label at full size would each be
    >= 324 MB, the bound is 200 MB (the 8-bit label itself is 108 MB)."""
    images = tmp_path / "huge"
    images.mkdir()
    big = Image.new("L", (12000, 9000), 60)
    big.paste(200, (0, 4500, 12000, 9000))
    big.save(images / "huge.jpg", quality=40)
    del big
    out = tmp_path / "out"
    labeling.build_vl_model("conse", device="cpu", clip_checkpoint=None)  # loaded untraced
    tracemalloc.start()
    try:
        result = invoke("label", images, "--classes", workspace / "classes.txt", "--out", out,
                        "--masks", "superpixel", "--vl", "conse", "--max-side", MAX_SIDE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    print(f"huge image: peak traced memory {peak / 2**20:.0f} MB")
    assert peak < 200 * 2**20, f"peak traced memory {peak / 2**20:.0f} MB"
    for sub in ("labels", "confidence"):
        with Image.open(out / sub / "huge.png") as written:
            assert written.size == (12000, 9000)
    with Image.open(out / "labels" / "huge.png") as written:
        thumb = np.array(written.resize((48, 36), Image.Resampling.NEAREST))
    assert set(np.unique(thumb).tolist()) <= ALLOWED
    assert (thumb[:16] == thumb[0, 0]).all() and (thumb[20:] == thumb[-1, 0]).all()


def test_huge_jpeg_decode_is_bounded(tmp_path):
    """The decoder itself, in a child process, by its peak RSS: a full decode of
    12000 x 9000 RGB is 324 MB on its own."""
    import subprocess
    import sys

    Image.new("RGB", (12000, 9000), (10, 200, 30)).save(tmp_path / "huge.jpg", quality=30)
    # VmHWM, not ru_maxrss: the latter survives exec and would report this process's peak.
    code = ("import re, sys; from pathlib import Path; from zsplg.data.images import read_image; "
            "a = read_image(sys.argv[1], max_side=1024); "
            "hwm = re.search(r'VmHWM:\\s*(\\d+)', Path('/proc/self/status').read_text()); "
            "print(a.shape, hwm.group(1))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "huge.jpg")],
                          capture_output=True, text=True, check=True)
    shape, peak_kb = done.stdout.rsplit(maxsplit=1)
    assert shape == "(768, 1024, 3)"
    assert int(peak_kb) < 150 * 1024, f"decoder peak RSS {int(peak_kb) / 1024:.0f} MB"


# --------------------------------------------------------------------------- label: lists


def test_list_naming_missing_files(labelled, workspace, tmp_path):
    images = workspace / "images"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{images / 'tiny.png'}\n"
                     f"{images / 'gone.jpg'}\n"
                     f"{images / 'rgba.png'} {tmp_path / 'no-such-gt.png'}\n")
    out = tmp_path / "out"
    result = invoke("label", "--list", pairs, "--classes", workspace / "classes.txt",
                    "--out", out, "--masks", "superpixel", "--vl", "conse", "--max-side",
                    MAX_SIDE)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["path"] == str(images / "gone.jpg")
    assert "not found" in records[0]["error"]
    assert "gone.jpg" in squash(result.output)
    # A missing ground truth does not stop an image from being labelled.
    labels = sorted(p.name for p in (out / "labels").rglob("*.png"))
    assert labels == ["rgba.png", "tiny.png"]


# --------------------------------------------------------------------------- whole-run mistakes


@pytest.mark.parametrize(("name", "text", "words"), [
    ("dup.txt", "background\ncat\nCat\n", "duplicate class name 'Cat'"),
    ("dup.yaml", "classes: [background, cat, {name: cat}]\n", "duplicate class name 'cat'"),
    ("empty.txt", "\n\n", "empty class list"),
    ("empty.yaml", "classes: []\n", "empty class list"),
])
def test_bad_class_lists_stop_label_and_eval_before_any_work(workspace, tmp_path, name, text,
                                                              words):
    spec = tmp_path / name
    spec.write_text(text)
    out = tmp_path / "out"
    result = invoke("label", workspace / "images", "--classes", spec, "--out", out)
    assert result.exit_code == 2, result.output
    assert squash(f"{spec}: {words}") in squash(result.output)
    assert "Traceback" not in result.output
    assert not out.exists()
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("a.png a_gt.png\n")
    result = invoke("eval", "--pred", tmp_path, "--list", pairs, "--classes", spec)
    assert result.exit_code == 2 and squash(words) in squash(result.output)


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unwritable_output_folder(workspace, tmp_path, where):
    """Tests run as root, so chmod cannot make a folder unwritable; a path below a
    regular file, or in /proc (no new entries there, even for root), cannot be made."""
    if where == "under-a-file":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        out = blocker / "out"
    else:
        out = Path("/proc") / f"zsplg-test-{tmp_path.name}"
    result = invoke("label", workspace / "images", "--classes", workspace / "classes.txt",
                    "--out", out, "--masks", "superpixel", "--vl", "conse")
    assert result.exit_code == 2, result.output
    assert squash(f"{out}: cannot write to the output folder") in squash(result.output)
    assert "Traceback" not in result.output
    assert not out.exists()


# --------------------------------------------------------------------------- eval


@pytest.fixture()
def eval_set(tmp_path):
    """Four images with gt and predictions: one good, one gt of the wrong size for
    its image, one gt with ids beyond the class list, one prediction likewise;
    plus a line whose gt is missing."""
    root = tmp_path
    for sub in ("img", "gt", "pred/img"):  # keys are list paths: img/good -> pred/img/good.png
        (root / sub).mkdir(parents=True)
    good = np.zeros((6, 8), np.uint8)
    good[:, 4:] = 1
    keys = ("good", "wrong_size", "gt_range", "gt_16bit", "pred_range", "no_gt")
    for key in keys:
        Image.new("RGB", (8, 6)).save(root / "img" / f"{key}.png")
        Image.fromarray(good).save(root / "pred" / "img" / f"{key}.png")
        Image.fromarray(good).save(root / "gt" / f"{key}.png")
    Image.fromarray(np.zeros((7, 8), np.uint8)).save(root / "gt" / "wrong_size.png")
    Image.fromarray(np.zeros((7, 8), np.uint8)).save(root / "pred" / "img" / "wrong_size.png")
    bad_gt = good.copy()
    bad_gt[0, 0] = 9
    Image.fromarray(bad_gt).save(root / "gt" / "gt_range.png")
    Image.fromarray(good.astype(np.uint16) * 300).save(root / "gt" / "gt_16bit.png")
    bad_pred = good.copy()
    bad_pred[1, 1] = 17
    Image.fromarray(bad_pred).save(root / "pred" / "img" / "pred_range.png")
    (root / "gt" / "no_gt.png").unlink()
    pairs = root / "pairs.txt"
    pairs.write_text("".join(f"img/{k}.png gt/{k}.png\n" for k in keys))
    (root / "classes.txt").write_text("background\ncat\n")
    return root


def test_eval_records_each_bad_label_and_scores_the_rest(eval_set):
    root = eval_set
    result = invoke("eval", "--pred", root / "pred", "--list", root / "pairs.txt", "--classes",
                    root / "classes.txt", "--json", root / "res" / "eval.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((root / "res" / "eval.json").read_text())
    assert metrics["images_evaluated"] == 1 and metrics["miou"] == pytest.approx(100.0)
    lines = (root / "res" / "eval_errors.jsonl").read_text().splitlines()
    errors = {e["key"].removeprefix("img/"): e for e in map(json.loads, lines)}
    assert list(errors.values()) == metrics["errors"]
    expected = {
        "wrong_size": ("gt/wrong_size.png", "does not match its image"),
        "gt_range": ("gt/gt_range.png", "ground-truth values out of range: 9"),
        "gt_16bit": ("gt/gt_16bit.png", "ground-truth values out of range: 300"),
        "pred_range": ("pred/img/pred_range.png", "prediction values out of range: 17"),
        "no_gt": ("gt/no_gt.png", "not found"),
    }
    assert sorted(errors) == sorted(expected)
    for key, (path, words) in expected.items():
        assert errors[key]["path"] == str(root / path)
        assert words in errors[key]["error"]
        assert squash(str(root / path)) in squash(result.output)


def test_eval_to_an_unwritable_place(eval_set):
    root = eval_set
    blocker = root / "a-file"
    blocker.write_text("x")
    result = invoke("eval", "--pred", root / "pred", "--list", root / "pairs.txt", "--classes",
                    root / "classes.txt", "--json", blocker / "eval.json")
    assert result.exit_code == 2, result.output
    assert "cannot write the evaluation results" in result.output
    assert squash(str(blocker)) in squash(result.output)
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- --config


@dataclass
class Optim:
    lr: float = 0.01
    schedule: Literal["poly", "cosine"] = "poly"


@dataclass
class TrainLike:
    """A stand-in for a trainer's config: what zsplg.cli.settings must handle besides labelling."""

    data: Path
    epochs: int = 10
    crop: tuple[int, int] = (321, 321)
    names: list[str] = field(default_factory=list)
    resume: bool = True
    seed: int | None = None
    optim: Optim = field(default_factory=Optim)


@pytest.mark.parametrize(("data", "words"), [
    ({"epochz": 3}, "unknown key 'epochz'; did you mean 'epochs'?"),
    ({"epochs": "ten"}, "key 'epochs': expected int, got str 'ten'"),
    ({"epochs": 2.5}, "key 'epochs': expected int, got float 2.5"),
    ({"epochs": True}, "key 'epochs': expected int, got bool True"),
    ({"resume": "yes"}, "key 'resume': expected bool, got str 'yes'"),
    ({"resume": 1}, "key 'resume': expected bool, got int 1"),
    ({"crop": [1, 2, 3]}, "key 'crop': expected list of int"),
    ({"names": ["a", 2]}, "key 'names': expected list of str, got list ['a', 2]"),
    ({"seed": "7"}, "key 'seed': expected int or null, got str '7'"),
    ({"optim": {"lr": "fast"}}, "key 'optim.lr': expected float, got str 'fast'"),
    ({"optim": {"schedul": "poly"}}, "unknown key 'optim.schedul'; did you mean 'optim.schedule'?"),
    ({"optim": {"schedule": "step"}}, "key 'optim.schedule': expected one of 'poly', 'cosine'"),
    ({"optim": 0.1}, "key 'optim': expected mapping, got float 0.1"),
    ({"epochs": 1, "Epochs": 2}, "unknown key 'Epochs'"),
])
def test_config_mistakes_name_the_key(tmp_path, data, words):
    with pytest.raises(InputError) as error:
        validate_config(data, TrainLike, tmp_path / "train.yaml")
    assert str(error.value).startswith(f"{tmp_path / 'train.yaml'}: ")
    assert words in str(error.value)


def test_config_values_are_converted(tmp_path):
    values = validate_config({"data": "d", "epochs": 3, "crop": [10, 20], "names": ["x"],
                              "seed": None, "optim": {"lr": 1}}, TrainLike, "x.yaml")
    assert values == {"data": Path("d"), "epochs": 3, "crop": (10, 20), "names": ["x"],
                      "seed": None, "optim": Optim(lr=1.0)}
    assert isinstance(values["optim"].lr, float)


def test_config_aliases_and_dashes(tmp_path):
    aliases = {"threshold": "background_threshold"}
    assert validate_config({"max-side": 64, "threshold": 0.3}, LabelConfig, "c.yaml",
                           aliases=aliases) == {"max_side": 64, "background_threshold": 0.3}
    with pytest.raises(InputError, match="'threshold' and 'background_threshold' set the same"):
        validate_config({"background_threshold": 0.2, "threshold": 0.3}, LabelConfig, "c.yaml",
                        aliases=aliases)


def test_load_config_file_problems(tmp_path):
    path = tmp_path / "c.yaml"
    with pytest.raises(InputError, match="file not found"):
        load_config(path, TrainLike)
    path.write_text("")
    assert load_config(path, TrainLike) == {}
    path.write_text("- a\n- b\n")
    with pytest.raises(InputError, match="expected a mapping of settings at the top level"):
        load_config(path, TrainLike)
    path.write_text("epochs: [1\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(path, TrainLike)


def test_load_config_paths_relative_to_the_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "c.yaml"
    path.write_text("data: ../data\nnames: [a]\n")
    values = load_config(path, TrainLike, path_keys=("data",))
    assert values["data"] == tmp_path / "data"


def test_apply_config_precedence_and_missing_keys():
    built = apply_config(TrainLike, {"data": Path("a"), "epochs": 3}, {"epochs": 5})
    assert built.data == Path("a") and built.epochs == 5 and built.crop == (321, 321)
    with pytest.raises(InputError, match="missing required setting.*data"):
        apply_config(TrainLike, {"epochs": 3}, {}, source="t.yaml")
    assert merge_settings({"a": 1, "b": 2, "c": 3}, {"a"}, {"a": 10, "b": 20}) == \
        {"a": 1, "b": 20, "c": 3}


@pytest.mark.parametrize(("text", "words"), [
    ("max_sied: 64\n", "unknown key 'max_sied'; did you mean 'max_side'?"),
    ("max_side: big\n", "key 'max_side': expected int, got str 'big'"),
    ("threshold: high\n", "key 'threshold': expected float or null, got str 'high'"),
    ("overlap: bogus\n", "overlap must be one of"),
    ("vl: clip-large\n", "unknown vision-language backend 'clip-large'"),
])
def test_label_config_mistakes_fail_before_any_work(workspace, tmp_path, text, words):
    config = tmp_path / "label.yaml"
    config.write_text(f"images_dir: {workspace / 'images'}\nclasses: "
                      f"{workspace / 'classes.txt'}\nout: out\n{text}")
    result = invoke("label", "--config", config)
    assert result.exit_code == 2, result.output
    assert squash(words) in squash(result.output)
    if "key" in words:
        assert squash(str(config)) in squash(result.output)
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_label_with_config_file(workspace, tmp_path):
    """Paths in the file are relative to it; options typed on the command line win;
    run.json records the whole resolved configuration and the file."""
    project = tmp_path / "project"
    (project / "images").mkdir(parents=True)
    shutil.copy(workspace / "images" / "tiny.png", project / "images")
    shutil.copy(workspace / "classes.txt", project)
    config = project / "label.yaml"
    config.write_text("images_dir: images\nclasses: classes.txt\nout: runs/a\n"
                      "masks: superpixel\nvl: conse\nmax-side: 32\noverlap: confidence\n"
                      "threshold: 0.5\ntemplates: ['a photo of a {}.']\n")
    result = invoke("label", "--config", config, "--overlap", "average")
    assert result.exit_code == 0, result.output
    run = json.loads((project / "runs" / "a" / "run.json").read_text())
    assert run["status"] == "finished" and run["counts"]["labelled"] == 1
    assert run["config_file"] == str(config)
    resolved = run["config"]
    assert resolved["overlap"] == "average"  # the flag
    assert resolved["max_side"] == 32 and resolved["background_threshold"] == 0.5  # the file
    assert resolved["templates"] == ["a photo of a {}."]
    assert resolved["images_dir"] == str(project / "images")
    assert resolved["classes"] == str(project / "classes.txt")
    assert resolved["device"] == "auto" and resolved["points_per_side"] == 32  # defaults
    assert run["settings"]["overlap"] == "average"
    # The same configuration again resumes; a flag that changes an output is refused.
    again = invoke("label", "--config", config, "--overlap", "average")
    assert again.exit_code == 0 and "already done 1" in again.output
    refused = invoke("label", "--config", config)
    assert refused.exit_code == 2 and "overlap" in squash(refused.output)
