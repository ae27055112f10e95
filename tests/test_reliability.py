"""The pseudo-label reliability table and the policy that weights pseudo labels by it.

Hand-computed counts and lookups, the calibration's held-out table on the coloured
quadrant set of test_calibrate, the dataset's per-pixel weights under augmentation,
and the training loop's choice of table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_calibrate import ColourModel, make_dataset, reduced

from zsplg.calibration.file import Calibration
from zsplg.calibration.reliability import (
    BINS,
    check_table,
    confidence_as_reliability,
    confidence_bins,
    count_correct,
    lookup,
    reliability_table,
)
from zsplg.calibration.search import calibrate
from zsplg.data.classes import load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.sources import list_images
from zsplg.train.config import TrainConfig
from zsplg.train.datasets import UnlabelledDataset
from zsplg.train.loop import pseudo_reliability
from zsplg.train.targets import policy_targets, reliability_targets


def test_counts_per_class_and_confidence_bin():
    # three atoms: class 1 at 0.95 (8 of 10 pixels right), class 1 at 0.42 (1 of 4),
    # class 0 at 1.0 (5 of 5); one unpainted atom (255) is not counted
    gt = np.array([[2, 8, 0], [3, 1, 0], [5, 0, 0], [7, 0, 0]])
    labels = np.array([1, 1, 0, 255])
    confidence = np.array([0.95, 0.42, 1.0, 0.9])
    correct, total = count_correct(labels, confidence, gt, bins=10)
    assert correct[1, 9] == 8 and total[1, 9] == 10
    assert correct[1, 4] == 1 and total[1, 4] == 4
    assert correct[0, 9] == 5 and total[0, 9] == 5
    assert total.sum() == 19 and correct.sum() == 14
    assert confidence_bins(np.array([0.0, 0.0999, 0.1, 1.0]), 10).tolist() == [0, 0, 1, 9]


def test_shrinkage_pulls_sparse_cells_to_their_class_and_class_to_overall():
    correct = np.array([[90.0, 0.0], [0.0, 0.0]])
    total = np.array([[100.0, 0.0], [0.0, 0.0]])
    table = reliability_table(correct, total, prior_pixels=10.0)
    assert table["overall"] == pytest.approx(0.9)
    # class 0: (90 + 10 * 0.9) / 110 = 0.9; an empty bin takes its class's figure
    assert table["per_class"][0] == pytest.approx(0.9)
    assert table["table"][0][0] == pytest.approx(0.9) and table["table"][0][1] == pytest.approx(0.9)
    # class 1 was never painted: it takes the overall figure
    assert table["table"][1] == [pytest.approx(0.9)] * 2
    # a well-measured cell keeps its own figure
    big = reliability_table(np.array([[20.0, 990.0]]), np.array([[100.0, 1000.0]]), 10.0)
    assert big["table"][0][1] == pytest.approx(0.99, abs=0.005)
    assert big["table"][0][0] < 0.3


def test_lookup_and_table_checks():
    table = {"table": [[0.1, 0.2], [0.5, 0.8]]}
    labels = np.array([[0, 1], [1, 255]])
    confidence = np.array([[0.9, 0.2], [0.7, 0.9]])
    np.testing.assert_allclose(lookup(table, labels, confidence), [[0.2, 0.5], [0.8, 0.0]])
    assert check_table(table, 2) is None
    assert "3 classes" in check_table({"table": [[0.5]] * 3}, 2)
    assert check_table(None, 2) == "no reliability table"
    assert "outside" in check_table({"table": [[1.5, 0.1]]}, 1)
    fallback = confidence_as_reliability(2)
    assert check_table(fallback, 2) is None
    assert lookup(fallback, np.array([1]), np.array([0.93]))[0] == pytest.approx(0.95)


def test_reliability_policy_weights_and_teacher_takeover():
    teacher = torch.tensor([[1, 1, 2, 0]])
    confidence = torch.tensor([[0.99, 0.99, 0.5, 0.97]])
    pseudo = torch.tensor([[1, 2, 2, 255]])
    weight_in = torch.tensor([[0.6, 0.999, 0.7, 1.0]])
    target, weight = reliability_targets(teacher, confidence, pseudo, 0.95, weight_in)
    # pixel 0: the teacher is confident and more so than the pseudo label is reliable
    # pixel 1: a pseudo label more reliable than the confident teacher keeps its place
    # pixel 2: an unsure teacher leaves the pseudo label, weighted by its reliability
    # pixel 3: no pseudo label: UniMatch's rule
    assert target.tolist() == [[1, 2, 2, 0]]
    torch.testing.assert_close(weight, torch.tensor([[1.0, 0.999, 0.7, 1.0]]))
    # without a table it is `replace`
    t, w = reliability_targets(teacher, confidence, pseudo, 0.95)
    t2, w2 = policy_targets("replace")(teacher, confidence, pseudo, 0.95)
    assert torch.equal(t, t2) and torch.equal(w, w2)


def test_calibration_stores_a_held_out_table(tmp_path):
    pairs = make_dataset(tmp_path, 8)
    model = ColourModel(bias={0: -0.6})
    spec = load_class_spec(pairs.parent / "classes.txt")
    lset = reduced(pairs, model)
    calibration = calibrate(lset, model, spec, mode="zero-shot", folds=2)
    table = calibration.reliability
    assert check_table(table, spec.num_classes) is None
    values = np.asarray(table["table"])
    assert values.shape == (spec.num_classes, BINS)
    # every labelled pixel the procedure painted on its held-out fold is counted once
    painted = np.asarray(table["pixels"]).sum()
    assert 0 < painted <= lset.atom_gt.sum()
    # the overall reliability is the held-out pixel accuracy of the painted pixels
    assert 0 < table["overall"] <= 1
    path = tmp_path / "calibration.json"
    calibration.save(path)
    assert Calibration.load(path).reliability == json.loads(json.dumps(table))
    # files written before the table existed keep their digest
    old = Calibration(**{**calibration.__dict__, "reliability": None})
    assert "reliability" not in json.loads(old.to_json())


def _pseudo_folder(tmp_path, confidence_value: int):
    images, labels, conf = (tmp_path / "images", tmp_path / "run" / "labels",
                            tmp_path / "run" / "confidence")
    for folder in (images, labels, conf):
        folder.mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 100, np.uint8)).save(images / "a.png")
    pseudo = np.zeros((20, 30), np.uint8)
    pseudo[:, 15:] = 1
    pseudo[:2, :2] = 255
    Image.fromarray(pseudo).save(labels / "a.png")
    Image.fromarray(np.full((20, 30), confidence_value, np.uint8)).save(conf / "a.png")
    return list_images(images), labels


def test_dataset_weights_follow_the_pseudo_labels_geometry(tmp_path):
    samples, labels = _pseudo_folder(tmp_path, 230)  # confidence 0.90: bin 9
    table = {"table": [[0.0] * 9 + [0.25], [0.0] * 9 + [0.75]]}
    dataset = UnlabelledDataset(samples, 16, pseudo_label_dir=labels, reliability=table, seed=3)
    for index in range(3):
        dataset.set_epoch(index)
        item = dataset[0]
        pseudo, weight, pad = item["pseudo"], item["pseudo_weight"], item["ignore_mask"] == 255
        inside = ~pad
        expected = torch.where(pseudo == 1, 0.75, 0.25)
        has = inside & (pseudo != 255)
        torch.testing.assert_close(weight[has], expected[has], atol=1 / 254, rtol=0)
        assert (weight[inside & (pseudo == 255)] == 0).all()


def test_loop_finds_the_label_runs_table_or_falls_back(tmp_path):
    samples, labels = _pseudo_folder(tmp_path, 230)
    config = TrainConfig(labelled="x", classes="y", out="z", pseudo_labels=str(labels))
    table, source = pseudo_reliability(config, labels, 2)
    assert "no table" in source and table["table"][0][9] == pytest.approx(0.95)
    stored = {"bins": 10, "table": [[0.5] * 10, [0.6] * 10], "pixels": [[1] * 10] * 2}
    calibration = Calibration(mode="zero-shot", templates=["{}"], template_set="plain",
                              background_threshold=0.5, temperature=0.1, offsets=[0.0, 0.0],
                              column_ids=[0, 1], reliability=stored)
    calibration.save(labels.parent / "calibration.json")
    table, source = pseudo_reliability(config, labels, 2)
    assert source.endswith("calibration.json") and table["table"][1][0] == 0.6
    # an explicit file for other classes is refused, naming the file
    config.pseudo_reliability = str(labels.parent / "calibration.json")
    with pytest.raises(InputError, match="3 classes|2 classes"):
        pseudo_reliability(config, labels, 3)


def test_calibrate_says_how_often_each_class_is_right(tmp_path):
    from zsplg.calibration.run import report_calibration
    from zsplg.runtime.progress import Reporter

    pairs = make_dataset(tmp_path, 6)
    model = ColourModel()
    spec = load_class_spec(pairs.parent / "classes.txt")
    calibration = calibrate(reduced(pairs, model), model, spec, mode="zero-shot", folds=2)
    calibration.fitted_for = {"class_names": spec.names}
    lines: list[str] = []

    class Recorder(Reporter):
        def log(self, message, level="info"):
            lines.append(message)

        def table(self, title, columns, rows):
            lines.append(title)

    report_calibration(calibration, Recorder())
    said = next(line for line in lines if line.startswith("pseudo labels right"))
    share = round(100 * calibration.reliability["per_class"][1])
    assert f"red {share} %" in said and "--policy reliability" in said
