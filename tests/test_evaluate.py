"""End-to-end evaluation over PNG files written into tmp_path."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke, squash
from PIL import Image

from zsplg.data.sources import read_pair_list
from zsplg.evaluate import EvalConfig, evaluate_folder, run_eval, write_eval_outputs
from zsplg.runtime.progress import Reporter

NAMES = ["bg", "cat", "dog"]


@dataclass
class FakeSample:
    image: Path
    label: Path | None
    key: str


def _palette_png(path: Path, arr: np.ndarray) -> None:
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _sample(root: Path, key: str, gt: np.ndarray | None) -> FakeSample:
    img = root / "images" / f"{key}.jpg"
    if gt is None:
        return FakeSample(img, None, key)
    label = root / "labels" / f"{key}.png"
    _palette_png(label, gt)
    return FakeSample(img, label, key)


@pytest.fixture()
def dataset(tmp_path):
    preds = tmp_path / "preds"
    gt_a = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    pred_a = np.array([[0, 1, 1], [1, 255, 2]], np.uint8)
    gt_b = np.array([[2, 2], [0, 0]], np.uint8)
    pred_b = np.array([[2, 2], [0, 2]], np.uint8)
    samples = [
        _sample(tmp_path, "a", gt_a),
        _sample(tmp_path, "sub/b", gt_b),  # keys may contain folders
        _sample(tmp_path, "missing", np.zeros((2, 2), np.uint8)),
        _sample(tmp_path, "wrongsize", np.zeros((2, 2), np.uint8)),
        _sample(tmp_path, "nolabel", None),
    ]
    _palette_png(preds / "a.png", pred_a)
    _palette_png(preds / "sub" / "b.png", pred_b)
    _palette_png(preds / "wrongsize.png", np.zeros((3, 2), np.uint8))
    _palette_png(preds / "nolabel.png", np.ones((2, 2), np.uint8))  # must be ignored
    return tmp_path, preds, samples


def test_evaluate_folder_end_to_end(dataset):
    _, preds, samples = dataset
    calls = []
    metrics, cm, errors = evaluate_folder(
        preds, samples, NAMES, progress=lambda d, t: calls.append((d, t))
    )
    # a: (0,0) (0,1) (1,1) (1,1) (2,abstain) ; b: (2,2) (2,2) (0,0) (0,2)
    expected = np.array([[2, 1, 1, 0], [0, 2, 0, 0], [0, 0, 2, 1]])
    np.testing.assert_array_equal(cm.matrix, expected)
    assert metrics["images_evaluated"] == 2
    assert metrics["images_failed"] == 2
    assert calls[-1] == (5, 5) and len(calls) == 5

    by_key = {e["key"]: e for e in errors}
    assert set(by_key) == {"missing", "wrongsize"}
    assert "not found" in by_key["missing"]["error"]
    assert by_key["missing"]["path"].endswith("missing.png")
    assert "(3, 2)" in by_key["wrongsize"]["error"] and "(2, 2)" in by_key["wrongsize"]["error"]

    # bg: TP2 FP0 FN2 -> 50; cat: TP2 FP1 FN0 -> 66.67; dog: TP2 FP1 FN1 -> 50
    rows = {r["name"]: r for r in metrics["per_class"]}
    assert rows["bg"]["iou"] == pytest.approx(50.0)
    assert rows["cat"]["iou"] == pytest.approx(200 / 3)
    assert rows["dog"]["iou"] == pytest.approx(50.0)
    assert metrics["miou"] == pytest.approx((50 + 200 / 3 + 50) / 3)
    assert metrics["coverage"] == pytest.approx(100 * 8 / 9)
    assert metrics["pixel_accuracy"] == pytest.approx(100 * 6 / 9)
    top = metrics["top_confusions"]
    assert {(t["gt"], t["pred"]) for t in top} == {("bg", "cat"), ("bg", "dog")}
    assert all(t["pixels"] == 1 for t in top)


def test_missing_gt_file_is_recorded(tmp_path):
    preds = tmp_path / "preds"
    _palette_png(preds / "x.png", np.zeros((2, 2), np.uint8))
    sample = FakeSample(tmp_path / "x.jpg", tmp_path / "labels" / "x.png", "x")
    metrics, cm, errors = evaluate_folder(preds, [sample], NAMES)
    assert errors == [
        {"key": "x", "path": str(tmp_path / "labels" / "x.png"), "error": errors[0]["error"]}
    ]
    assert "ground-truth" in errors[0]["error"]
    assert metrics["images_evaluated"] == 0
    assert metrics["miou"] is None
    assert cm.matrix.sum() == 0


def test_rgb_label_raises_clear_error(tmp_path):
    label = tmp_path / "labels" / "x.png"
    label.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8), mode="RGB").save(label)
    preds = tmp_path / "preds"
    _palette_png(preds / "x.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="mode RGB"):
        evaluate_folder(preds, [FakeSample(tmp_path / "x.jpg", label, "x")], NAMES)


def test_grayscale_label_is_accepted(tmp_path):
    label = tmp_path / "x.png"
    Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="L").save(label)
    preds = tmp_path / "preds"
    _palette_png(preds / "x.png", np.array([[0, 1], [2, 0]], np.uint8))
    metrics, _, errors = evaluate_folder(preds, [FakeSample(label, label, "x")], NAMES)
    assert errors == []
    assert metrics["miou"] == pytest.approx(100.0)


def test_corrupt_prediction_is_recorded(tmp_path):
    label = tmp_path / "x.png"
    _palette_png(label, np.zeros((2, 2), np.uint8))
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "x.png").write_bytes(b"not a png")
    _, _, errors = evaluate_folder(preds, [FakeSample(label, label, "x")], NAMES)
    assert len(errors) == 1 and "cannot read prediction" in errors[0]["error"]


def test_write_eval_outputs(dataset, tmp_path):
    _, preds, samples = dataset
    metrics, cm, _ = evaluate_folder(preds, samples, NAMES)
    out = tmp_path / "out" / "eval.json"
    write_eval_outputs(out, metrics, cm, NAMES)
    loaded = json.loads(out.read_text())
    assert loaded["miou"] == pytest.approx(metrics["miou"])
    assert loaded["images_evaluated"] == 2
    assert out.read_text().startswith('{\n  "')  # indent 2
    csv_path = out.with_name("eval_confusion.csv")
    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["gt\\pred", "bg", "cat", "dog", "unlabelled"]
    assert rows[1] == ["bg", "2", "1", "1", "0"]
    assert rows[3] == ["dog", "0", "0", "2", "1"]


def test_confidence_floors_score_only_the_sure_pixels(tmp_path):
    """A label run folder: labels/ and confidence/; floors keep pixels at least that sure."""
    run = tmp_path / "run"
    gt = np.array([[0, 0, 1, 1], [2, 2, 1, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 2]], np.uint8)  # wrong at (0,1) and (1,1)
    sure = np.array([[0.9, 0.2, 0.8, 0.9], [0.9, 0.4, 0.6, 0.9]])
    _palette_png(run / "labels" / "a.png", pred)
    from zsplg.data.labels import write_confidence_png

    write_confidence_png(run / "confidence" / "a.png", sure.astype(np.float32))
    samples = [_sample(tmp_path, "a", gt)]
    metrics, _, errors = evaluate_folder(run / "labels", samples, ["c0", "c1", "c2"],
                                         confidence_floors=(0.5, 0.7, 0.0))
    assert not errors
    floors = {row["floor"]: row for row in metrics["confidence_floors"]}
    assert list(floors) == [0.0, 0.5, 0.7]  # sorted
    assert floors[0.0]["kept"] == pytest.approx(100.0)
    assert floors[0.0]["miou"] == pytest.approx(metrics["miou"])
    # >= 0.5 drops exactly the two wrong pixels: 5 of 7 valid pixels, all right
    assert floors[0.5]["kept"] == pytest.approx(100 * 5 / 7)
    assert floors[0.5]["pixel_accuracy"] == pytest.approx(100.0)
    assert floors[0.7]["kept"] == pytest.approx(100 * 4 / 7)  # (1,2) at 0.6 goes too
    with pytest.raises(Exception, match="confidence maps not found"):
        evaluate_folder(tmp_path / "labels", samples, ["c0", "c1", "c2"],
                        confidence_floors=(0.5,))


# --------------------------------------------------------------------------- matching, zsplg eval


def _eval_workspace(tmp_path: Path, pred_keys: list[str]) -> tuple[Path, Path, Path]:
    """A list keyed images/voc (and images/cat) with ground truth; predictions under
    the given keys, each a copy of its ground truth."""
    gt = {"voc": np.array([[0, 1], [2, 2]], np.uint8), "cat": np.array([[1, 1], [0, 0]], np.uint8)}
    lines = []
    for name, arr in gt.items():
        Image.new("RGB", (2, 2)).save(_mkdir(tmp_path / "images") / f"{name}.png")
        _palette_png(tmp_path / "gt" / f"{name}.png", arr)
        lines.append(f"images/{name}.png gt/{name}.png\n")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("".join(lines))
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(NAMES) + "\n")
    preds = _mkdir(tmp_path / "preds")
    for key in pred_keys:
        _palette_png(preds / f"{key}.png", gt.get(Path(key).name, gt["voc"]))
    return preds, pairs, classes


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_predictions_match_the_list_by_unique_file_name(tmp_path):
    preds, pairs, _ = _eval_workspace(tmp_path, ["voc", "cat"])  # labelled from images/
    samples = read_pair_list(pairs)
    assert [s.key for s in samples] == ["images/voc", "images/cat"]
    metrics, _, errors = evaluate_folder(preds, samples, NAMES)
    assert errors == []
    assert metrics["images_scored"] == metrics["images_evaluated"] == 2
    assert metrics["images_listed"] == 2
    assert metrics["miou"] == pytest.approx(100.0)


def test_own_key_wins_and_an_ambiguous_file_name_is_not_guessed(tmp_path):
    preds, pairs, _ = _eval_workspace(tmp_path, ["images/voc", "a/cat", "b/cat"])
    _palette_png(preds / "other" / "voc.png", np.zeros((2, 2), np.uint8))  # not images/voc's
    metrics, _, errors = evaluate_folder(preds, read_pair_list(pairs), NAMES)
    assert metrics["images_scored"] == 1 and metrics["miou"] == pytest.approx(100.0)
    assert [e["key"] for e in errors] == ["images/cat"]
    assert "2 with its file name" in errors[0]["error"]


def test_cli_eval_says_how_many_images_it_scored(tmp_path):
    preds, pairs, classes = _eval_workspace(tmp_path, ["voc"])
    result = invoke("eval", "--pred", preds, "--list", pairs, "--classes", classes)
    assert result.exit_code == 0, result.output
    assert "scored 1 of 2 images" in result.output
    assert squash(f"mIoU 100.00 -> {preds / 'eval.json'}") in squash(result.output)
    metrics = json.loads((preds / "eval.json").read_text())
    assert metrics["images_scored"] == 1 and metrics["images_listed"] == 2


def test_cli_eval_with_no_matching_prediction_fails_in_one_line(tmp_path):
    preds, pairs, classes = _eval_workspace(tmp_path, ["dog", "sub/bird"])
    result = invoke("eval", "--pred", preds, "--list", pairs, "--classes", classes)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "no image was scored: prediction keys (dog, sub/bird) do not match the list" in lines[0]
    assert "images/voc" in lines[0] and "Traceback" not in result.output
    assert not (preds / "eval.json").exists()


def test_cli_eval_takes_a_label_run_folder_as_pred(tmp_path):
    """OUT of `zsplg label` as --pred scores OUT/labels: labels/ and confidence/ hold
    twins of every key, which would otherwise make every match ambiguous."""
    preds, pairs, classes = _eval_workspace(tmp_path, ["voc", "cat"])
    run = tmp_path / "run"
    preds.rename(_mkdir(run) / "labels")
    from zsplg.data.labels import write_confidence_png

    for name in ("voc", "cat"):
        write_confidence_png(run / "confidence" / f"{name}.png",
                             np.ones((2, 2), np.float32))
    (run / "run.json").write_text("{}")
    result = invoke("eval", "--pred", run, "--list", pairs, "--classes", classes)
    assert result.exit_code == 0, result.output
    assert "scored 2 of 2 images" in result.output
    assert json.loads((run / "eval.json").read_text())["miou"] == pytest.approx(100.0)


def test_cli_eval_where_every_matched_image_fails_exits_1(tmp_path):
    preds, pairs, classes = _eval_workspace(tmp_path, ["voc"])
    _palette_png(preds / "voc.png", np.zeros((3, 3), np.uint8))  # wrong size
    result = invoke("eval", "--pred", preds, "--list", pairs, "--classes", classes)
    assert result.exit_code == 1, result.output
    assert "no image was scored" in result.output and "Traceback" not in result.output
    assert "size mismatch" in (preds / "eval_errors.jsonl").read_text()


class _Recorder:
    """A Reporter that keeps what it was given."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.tables: list[tuple[str, list[str], list[list[str]]]] = []

    def log(self, message: str, level: str = "info") -> None:
        self.lines.append((level, message))

    def table(self, title, columns, rows) -> None:
        self.tables.append((title, list(columns), [list(r) for r in rows]))

    def task(self, description, total, unit="img"):
        return Reporter().task(description, total, unit)


def test_run_eval_reports_plain_tables_and_lines(tmp_path):
    preds, pairs, classes = _eval_workspace(tmp_path, ["voc", "cat"])
    _palette_png(preds / "cat.png", np.array([[1, 2], [0, 0]], np.uint8))  # one pixel wrong
    recorder = _Recorder()
    metrics, written = run_eval(EvalConfig(pred=str(preds), pair_list=str(pairs),
                                           classes=str(classes),
                                           json_path=str(tmp_path / "out" / "e.json")),
                                recorder)
    assert written == tmp_path / "out" / "e.json" and written.is_file()
    titles = [t[0] for t in recorder.tables]
    assert titles == ["Pseudo-label evaluation", "top confusions"]
    summary = recorder.tables[0][2][-1]
    assert summary[0] == "mIoU / pixel acc / coverage" and summary[1] == f"{metrics['miou']:.2f}"
    assert all(isinstance(cell, str) and "[" not in cell
               for _, _, rows in recorder.tables for row in rows for cell in row)
    assert ("info", "scored 2 of 2 images") in recorder.lines


def test_eval_config_refuses_floors_outside_0_1():
    with pytest.raises(ValueError, match=r"confidence floors must be in \[0, 1\]"):
        EvalConfig(pred="p", pair_list="l", classes="c", confidence_floors=[0.5, 1.5]).validate()
