"""Calibration: the fast atom-based scoring, the search, the file, and `label --calibration`.

A tiny fake backend (features = mean colour, text = class colours) and a fake
mask generator (image quadrants and halves) make every step exact and fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from typer.testing import CliRunner

import zsplg.labeling.labeller as labeller_module
import zsplg.labeling.settings as settings_module
from zsplg.calibration.file import Calibration, CalibrationError, check_compatible
from zsplg.calibration.labelled_set import LabelledSet, atoms_of, reduce_image, reduce_sample
from zsplg.calibration.run import run_calibrate
from zsplg.calibration.search import (
    calibrate,
    make_folds,
    score_calibration,
    zero_shot_scorer,
)
from zsplg.calibration.settings import CalibrateConfig
from zsplg.cli import app
from zsplg.data.classes import load_class_spec
from zsplg.data.errors import InputError
from zsplg.data.sources import read_pair_list
from zsplg.labeling.annotate import Annotator
from zsplg.labeling.settings import AnnotatorConfig, ConfigMismatchError, LabelConfig
from zsplg.masks.base import MaskProposals
from zsplg.metrics import ConfusionMatrix
from zsplg.pipeline import label
from zsplg.vl.base import thresholded_softmax

COLOURS = {1: (220, 30, 30), 2: (30, 200, 40), 3: (40, 40, 210)}  # red, green, blue
CLASSES = ["background", "red", "green", "blue"]


class ColourModel:
    """Features: the image's RGB in [0, 1] on an 8 x 8 grid, centred; text: a vector per
    class name. `bias` adds to one class's similarity, the kind of prior a zero-shot
    namer gets wrong and calibration must undo."""

    name = "colour"
    default_threshold = 0.5
    default_temperature = 0.05

    def __init__(self, bias: dict[int, float] | None = None) -> None:
        self.bias = bias or {}

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image.copy()).permute(2, 0, 1).float()[None] / 255.0
        return F.adaptive_avg_pool2d(x, 8)[0] - 0.4

    def encode_text(self, prompts: list[list[str]]) -> torch.Tensor:
        table = {"red": (1.0, -0.5, -0.5), "green": (-0.5, 1.0, -0.5), "blue": (-0.5, -0.5, 1.0)}
        vectors = []
        for group in prompts:
            name = next((n for n in table if n in group[0]), None)
            vectors.append(table.get(name, (1.0, 1.0, 1.0)))
        return F.normalize(torch.tensor(vectors), dim=-1)

    def class_probabilities(self, pooled, text, threshold, temperature):
        similarity = F.normalize(pooled.float(), dim=-1) @ text.T
        for column, value in self.bias.items():
            similarity[:, column] += value
        return thresholded_softmax(similarity, threshold, temperature)

    def config(self) -> dict:
        return {"name": self.name, "bias": {str(k): v for k, v in self.bias.items()}}


class QuadrantMasks:
    """Four quadrants plus the left and right halves (two overlapping scales)."""

    name = "quadrants"

    def generate(self, image: np.ndarray) -> MaskProposals:
        h, w = image.shape[:2]
        masks = np.zeros((6, h, w), dtype=bool)
        masks[0, : h // 2, : w // 2] = True
        masks[1, : h // 2, w // 2:] = True
        masks[2, h // 2:, : w // 2] = True
        masks[3, h // 2:, w // 2:] = True
        masks[4, :, : w // 2] = True
        masks[5, :, w // 2:] = True
        return MaskProposals.from_masks(masks)

    def config(self) -> dict:
        return {"name": self.name}


def make_dataset(root: Path, count: int, seed: int = 0) -> Path:
    """Images of four coloured quadrants (background = grey) and their labels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    lines = []
    for i in range(count):
        label = np.zeros((32, 40), dtype=np.uint8)
        image = np.full((32, 40, 3), 128, dtype=np.float64)
        for (r, c) in ((0, 0), (0, 1), (1, 0), (1, 1)):
            cls = int(rng.integers(0, 4))
            rows, cols = slice(r * 16, r * 16 + 16), slice(c * 20, c * 20 + 20)
            label[rows, cols] = cls
            if cls:
                image[rows, cols] = COLOURS[cls]
        label[0, 0] = 255  # one ignored pixel
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(label, mode="L").save(root / "labels" / f"im{i}.png")
        lines.append(f"images/im{i}.png labels/im{i}.png")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root / "pairs.txt"


@pytest.fixture(autouse=True)
def small_search(monkeypatch):
    """A coarser search grid: the same code paths, a fraction of the trials."""
    import zsplg.calibration.search as calibrate_module

    monkeypatch.setattr(calibrate_module, "TEMPLATE_SETS",
                        {k: calibrate_module.TEMPLATE_SETS[k] for k in ("default", "plain")})
    monkeypatch.setattr(calibrate_module, "THRESHOLD_FACTORS", (0.75, 1.0, 1.25))
    monkeypatch.setattr(calibrate_module, "TEMPERATURE_FACTORS", (0.5, 2.0))
    monkeypatch.setattr(calibrate_module, "OFFSET_GRID", (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0))
    monkeypatch.setattr(calibrate_module, "FEWSHOT_WEIGHTS", (0.5,))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("calib"), 12)


def reduced(pairs: Path, model) -> LabelledSet:
    spec = load_class_spec(pairs.parent / "classes.txt")
    images = [reduce_sample(s, QuadrantMasks(), model, spec.num_classes, spec.ignore_index)
              for s in read_pair_list(pairs)]
    return LabelledSet(images, spec.num_classes)


# --------------------------------------------------------------------------- atoms


def test_atoms_group_pixels_by_their_covering_masks():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :, :2] = True
    masks[1, :2, :] = True
    atom, members = atoms_of(masks)
    assert members.shape == (4, 2)  # {0,1}, {0}, {1}, {} (uncovered)
    sets = {tuple(members[atom[p]].toarray()[0].astype(int)) for p in range(16)}
    assert sets == {(1, 1), (1, 0), (0, 1), (0, 0)}
    grid = atom.reshape(4, 4)
    assert grid[0, 0] == grid[1, 1] and grid[0, 0] != grid[0, 2] != grid[2, 2]


class FixedProbabilities:
    """A model whose class probabilities are given per mask (rows of `probs`)."""

    name = "fixed"
    default_threshold = 0.0
    default_temperature = 1.0

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = torch.from_numpy(probs)

    def class_probabilities(self, pooled, text, threshold, temperature):
        return self.probs[pooled[:, 0].long()]


@pytest.mark.parametrize("overlap", ["average", "small-on-top", "large-on-top", "confidence"])
@pytest.mark.parametrize("background", [0, None])
def test_atom_scoring_equals_painting_every_pixel(overlap, background):
    """The calibration's confusion matrix is the one the annotator's painted map gives."""
    rng = np.random.default_rng(1)
    height, width, classes = 24, 30, 4
    masks = np.zeros((7, height, width), dtype=bool)
    for i in range(7):
        r, c = rng.integers(0, height - 6), rng.integers(0, width - 6)
        masks[i, r:r + rng.integers(4, 16), c:c + rng.integers(4, 20)] = True
    proposals = MaskProposals.from_masks(masks)
    probs = rng.dirichlet(np.ones(classes), size=7).astype(np.float32)
    gt = rng.integers(0, classes, size=(height, width)).astype(np.uint8)
    gt[0, :5] = 255
    class_ids = [1, 2, 3] if background == 0 else [0, 1, 2]
    annotator = Annotator(FixedProbabilities(probs), torch.zeros(3, 2), class_ids, background,
                          AnnotatorConfig(overlap=overlap))
    index_features = torch.arange(7, dtype=torch.float32)[:, None]
    painted = annotator.annotate_pooled(proposals, index_features).label
    expected = ConfusionMatrix(classes)
    expected.update(painted, gt)

    item = reduce_image("x", proposals, torch.zeros(2, 4, 5), gt, classes)
    lset = LabelledSet([item], classes)
    column_to_id = annotator.column_to_id
    labels = lset.atom_labels(probs, column_to_id, overlap)
    np.testing.assert_array_equal(lset.confusion(labels), expected.matrix)
    # the atom confidence is the confidence map `zsplg label` writes (reliability bins)
    painted_confidence = annotator.annotate_pooled(proposals, index_features).confidence
    atom_of_pixel, _ = atoms_of(masks)
    confidence = lset.atom_confidence(probs, overlap)
    np.testing.assert_allclose(confidence[atom_of_pixel].reshape(height, width),
                               painted_confidence, atol=1e-5)


def test_reduce_records_ground_truth_per_mask_and_region():
    masks = np.zeros((2, 4, 6), dtype=bool)
    masks[0, :, :3] = True
    masks[1, :, 3:] = True
    gt = np.zeros((4, 6), dtype=np.uint8)
    gt[:, 2:] = 1
    gt[0, 0] = 255
    features = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    item = reduce_image("k", MaskProposals.from_masks(masks), features, gt, 2)
    np.testing.assert_array_equal(item.mask_gt(), [[7, 4], [0, 12]])
    np.testing.assert_array_equal(item.region_class, [0, 1])
    assert item.pooled.shape == (2, 2) and item.region_pooled.shape == (2, 2)


def test_folds_cover_every_image_once_and_are_balanced():
    folds = make_folds(23, 5, seed=3)
    counts = np.bincount(folds)
    assert len(counts) == 5 and counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(folds, make_folds(23, 5, seed=3))
    assert not np.array_equal(folds, make_folds(23, 5, seed=4))
    with pytest.raises(ValueError):
        make_folds(1, 5)


# --------------------------------------------------------------------------- search


def test_calibration_undoes_a_biased_namer_with_an_honest_gain(dataset):
    """Red loses 0.6 similarity everywhere: uncalibrated, no red region beats the threshold."""
    model = ColourModel(bias={0: -0.6})  # similarity columns: red, green, blue
    spec = load_class_spec(dataset.parent / "classes.txt")
    lset = reduced(dataset, model)
    messages: list[str] = []
    calibration = calibrate(lset, model, spec, mode="zero-shot", folds=3, log=messages.append)
    report = calibration.report
    assert report["before"]["per_class_iou"]["red"] == 0
    assert report["after"]["per_class_iou"]["red"] > 20  # held-out images
    assert report["after"]["miou"] > report["before"]["miou"] + 10
    assert calibration.background_threshold < model.default_threshold
    assert calibration.mode == "zero-shot" and calibration.head is None
    assert any("cross-validated" in m for m in messages)
    assert report["after"]["top_confusions"]


def test_auto_mode_compares_modes_and_few_shot_learns_the_colours(dataset):
    model = ColourModel(bias={0: 0.8})  # red wins everything zero-shot
    spec = load_class_spec(dataset.parent / "classes.txt")
    lset = reduced(dataset, model)
    ticks: list[tuple[int, int]] = []
    calibration = calibrate(lset, model, spec, mode="auto", folds=3, log=lambda m: None,
                            progress=lambda done, total: ticks.append((done, total)))
    # 3 cross-fitted heads, and per outer fold 3 heads that never saw it; per outer fold
    # 4 modes (the defaults included) fitted on the other folds and, to choose among
    # them, 4 modes x 2 inner folds; then the chosen mode fitted on everything:
    # 3 + 9 + 36 + 1
    assert ticks == [(i, 49) for i in range(1, 50)]
    modes = calibration.report["modes"]
    assert set(modes) == {"uncalibrated", "zero-shot", "few-shot", "fused"}
    # nothing is fitted for the defaults: their held-out figure is "before"
    assert modes["uncalibrated"] == calibration.report["before"]
    assert modes["few-shot"]["miou"] > 90
    assert calibration.mode in ("few-shot", "fused") and calibration.head is not None
    # "after" is the nested estimate of choosing, not the best of the modes' estimates
    selected = calibration.report["selected_per_fold"]
    assert len(selected) == 3 and set(selected) <= set(modes)
    if len(set(selected)) == 1:
        assert calibration.report["after"]["miou"] == modes[selected[0]]["miou"]
    assert calibration.report["after"]["miou"] > 90


def test_auto_mode_keeps_the_defaults_when_fitting_loses(dataset, monkeypatch):
    """A fit that always returns worse settings than the defaults: auto keeps the defaults,
    and the file then changes no score but still holds the reliability table."""
    from zsplg.calibration import search

    model = ColourModel()  # the defaults already name every colour
    spec = load_class_spec(dataset.parent / "classes.txt")
    lset = reduced(dataset, model)
    real_fit = search._Problem.fit

    def bad_fit(self, image_indices, mode, fewshot, tune_offsets=True):
        setting = real_fit(self, image_indices, mode, fewshot, tune_offsets=False)
        if mode == "uncalibrated":
            return setting
        offsets = np.zeros_like(setting.offsets)
        offsets[1] = 50.0  # red beats everything
        return search._Setting(*self.default_key, weight=setting.weight, offsets=offsets)

    monkeypatch.setattr(search._Problem, "fit", bad_fit)
    calibration = calibrate(lset, model, spec, mode="auto", folds=3, log=lambda m: None)
    report = calibration.report
    assert report["chosen"] == "uncalibrated" and calibration.mode == "uncalibrated"
    assert set(report["selected_per_fold"]) == {"uncalibrated"}
    assert report["after"] == report["before"]
    assert all(report["modes"][m]["miou"] < report["before"]["miou"]
               for m in ("zero-shot", "few-shot", "fused"))
    assert calibration.head is None and not any(calibration.offsets)
    assert calibration.background_threshold == model.default_threshold
    assert calibration.reliability is not None


def test_conse_fast_scorer_equals_class_probabilities():
    from zsplg.vl.conse import ConSEBackend

    torch.manual_seed(0)
    backend = ConSEBackend.__new__(ConSEBackend)  # no weights: a small random classifier
    backend.scoring = "transfer"
    backend.device = torch.device("cpu")
    backend.model = torch.nn.Module()
    backend.model.classifier = torch.nn.Linear(6, 10)
    backend.label_vectors = F.normalize(torch.randn(10, 4), dim=-1)
    pooled, text = torch.randn(5, 6), F.normalize(torch.randn(3, 4), dim=-1)
    fast = zero_shot_scorer(backend, pooled)
    torch.testing.assert_close(fast(text, 0.3, 0.05),
                               backend.class_probabilities(pooled, text, 0.3, 0.05))


# --------------------------------------------------------------------------- file + label


def patch_backends(monkeypatch, model) -> None:
    monkeypatch.setattr(labeller_module, "build_vl_model", lambda *a, **k: model)
    monkeypatch.setattr(labeller_module, "build_mask_generator", lambda *a, **k: QuadrantMasks())
    for module in (labeller_module, settings_module):
        monkeypatch.setattr(module, "resolve_mask_generator_name",
                            lambda *a, **k: "superpixel")
    monkeypatch.setattr(settings_module, "resolve_vl_name", lambda *a, **k: "conse")


def test_calibrate_then_label_applies_the_file_and_records_it(dataset, tmp_path, monkeypatch):
    model = ColourModel(bias={0: -0.6})
    patch_backends(monkeypatch, model)
    classes = dataset.parent / "classes.txt"
    calib_path = tmp_path / "calib.json"
    calibration = run_calibrate(CalibrateConfig(pair_list=str(dataset), classes=str(classes),
                                                out=str(calib_path), mode="zero-shot", folds=3))
    saved = json.loads(calib_path.read_text())
    assert saved["format"] == "zsplg-calibration"
    assert saved["fitted_for"]["vl"] == model.config()
    assert Calibration.load(calib_path).offsets == calibration.offsets

    spec = load_class_spec(classes)
    config = LabelConfig(classes=str(classes), out=str(tmp_path / "calibrated"),
                         pair_list=str(dataset), calibration=str(calib_path))
    info = label(config)
    assert info["settings"]["calibration"]["digest"] == calibration.digest()
    assert info["settings"]["background_threshold"] == calibration.background_threshold

    plain = label(LabelConfig(classes=str(classes), out=str(tmp_path / "p"),
                              pair_list=str(dataset)))
    assert plain["settings"].get("calibration") is None
    from zsplg.evaluate import evaluate_folder

    samples = read_pair_list(dataset)
    before, _, _ = evaluate_folder(tmp_path / "p" / "labels", samples, spec.names)
    after, _, _ = evaluate_folder(tmp_path / "calibrated" / "labels", samples, spec.names)
    assert after["miou"] > before["miou"] + 25
    # painted labels score exactly what the calibration's fast path says
    lset = reduced(dataset, model)
    fast = score_calibration(calibration, lset, model, spec)
    assert fast["miou"] == pytest.approx(after["miou"], abs=0.01)

    # resuming with another calibration is refused; the same one resumes
    other = Calibration.load(calib_path)
    other.offsets = [0.0] * len(other.offsets)
    other.save(tmp_path / "other.json")
    with pytest.raises(ConfigMismatchError, match="calibration"):
        label(LabelConfig(classes=str(classes),
                          out=str(tmp_path / "calibrated"),
                          pair_list=str(dataset),
                          calibration=str(tmp_path / "other.json")))
    again = label(config)
    assert again["counts"]["already_done"] == len(samples)


def test_label_refuses_a_calibration_fitted_for_other_classes_or_backend(dataset, tmp_path,
                                                                         monkeypatch):
    model = ColourModel()
    patch_backends(monkeypatch, model)
    classes = dataset.parent / "classes.txt"
    calib_path = tmp_path / "calib.json"
    run_calibrate(CalibrateConfig(pair_list=str(dataset), classes=str(classes),
                                  out=str(calib_path), mode="zero-shot", folds=2))
    renamed = tmp_path / "classes.txt"
    renamed.write_text("background\nred\ngreen\nnavy\n")
    with pytest.raises(CalibrationError, match="another class spec"):
        label(LabelConfig(classes=str(renamed), out=str(tmp_path / "o"),
                          pair_list=str(dataset),
                          calibration=str(calib_path)))
    calibration = Calibration.load(calib_path)
    expected = dict(calibration.fitted_for, vl={"name": "clip-gem"})
    with pytest.raises(CalibrationError, match="vision-language backend.*recalibrate"):
        check_compatible(calibration, expected, "calib.json")
    with pytest.raises(ValueError, match="--threshold"):
        label(LabelConfig(classes=str(classes), out=str(tmp_path / "t"),
                          pair_list=str(dataset), background_threshold=9.0,
                          calibration=str(calib_path)))


def test_label_calibrate_on_writes_and_reuses_the_file(dataset, tmp_path, monkeypatch):
    patch_backends(monkeypatch, ColourModel(bias={0: -0.6}))
    classes = dataset.parent / "classes.txt"
    out = tmp_path / "run"
    config = LabelConfig(classes=str(classes), out=str(out), pair_list=str(dataset),
                         calibrate_on=str(dataset))
    first = label(config)
    assert (out / "calibration.json").is_file()
    stamp = (out / "calibration.json").stat().st_mtime_ns
    second = label(config)  # resume: same list, file reused, nothing relabelled
    assert (out / "calibration.json").stat().st_mtime_ns == stamp
    assert second["counts"]["already_done"] == first["counts"]["labelled"]
    # the few-shot head went through `label` exactly as the calibration scored it
    from zsplg.evaluate import evaluate_folder

    calibration = Calibration.load(out / "calibration.json")
    assert calibration.head is not None and first["settings"]["calibration"]["mode"] != "zero-shot"
    spec = load_class_spec(classes)
    painted, _, _ = evaluate_folder(out / "labels", read_pair_list(dataset), spec.names)
    model = ColourModel(bias={0: -0.6})
    fast = score_calibration(calibration, reduced(dataset, model), model, spec)
    assert fast["miou"] == pytest.approx(painted["miou"], abs=0.01)


def test_calibration_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="c.json"):
        Calibration.load(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a zsplg calibration"):
        Calibration.load(bad)
    with pytest.raises(InputError, match="not found"):
        Calibration.load(tmp_path / "missing.json")


def test_cli_calibrate_reports_bad_input_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["calibrate", "--list", str(tmp_path / "none.txt"),
                                      "--classes", str(tmp_path / "none.txt"),
                                      "--out", str(tmp_path / "c.json")])
    assert result.exit_code == 2
    assert "error" in result.output and "none.txt" in result.output
    result = CliRunner().invoke(app, ["calibrate", "--list", "x", "--classes", "y", "--out", "z",
                                      "--mode", "magic"])
    assert result.exit_code == 2 and "--mode" in result.output
    # the backend settings are checked as `label` checks them, before any file is read
    for option, value, words in (("--overlap", "bogus", "overlap"), ("--max-side", "0", "max_side"),
                                 ("--masks", "sam-vit-q", "sam-vit-q")):
        result = CliRunner().invoke(app, ["calibrate", "--list", "x", "--classes", "y",
                                          "--out", "z", option, value])
        assert result.exit_code == 2 and words in result.output, result.output
        assert "Traceback" not in result.output


def test_calibrate_then_label_reads_only_the_labelled_lists_ground_truth(tmp_path, monkeypatch):
    """The protocol's guarantee: calibrating (and then labelling) never opens the ground
    truth of an image it treats as unlabelled, even when the list to label carries it."""
    import PIL.Image

    pairs = make_dataset(tmp_path / "data", 12, seed=3)
    lines = pairs.read_text().split("\n")
    (tmp_path / "labelled.txt").write_text("\n".join(lines[:6]) + "\n")
    (tmp_path / "to_label.txt").write_text("\n".join(lines[6:12]) + "\n")  # labels included
    for name in ("labelled.txt", "to_label.txt"):  # entries relative to the data folder
        text = (tmp_path / name).read_text().replace("images/", str(pairs.parent / "images") + "/")
        (tmp_path / name).write_text(text.replace("labels/", str(pairs.parent / "labels") + "/"))
    allowed = {str(pairs.parent / line.split()[1]) for line in lines[:6]}
    opened: list[str] = []
    real_open = PIL.Image.open

    def recording_open(fp, *args, **kwargs):
        opened.append(str(Path(fp).resolve()) if isinstance(fp, (str, Path)) else repr(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", recording_open)
    patch_backends(monkeypatch, ColourModel(bias={0: -0.6}))
    out = tmp_path / "run"
    info = label(LabelConfig(classes=str(pairs.parent / "classes.txt"), out=str(out),
                             pair_list=str(tmp_path / "to_label.txt"),
                             calibrate_on=str(tmp_path / "labelled.txt")))
    assert info["counts"]["labelled"] == 6
    ground_truth = {p for p in opened if str(pairs.parent / "labels") in p}
    assert ground_truth and ground_truth <= {str(Path(p).resolve()) for p in allowed}


def test_no_head_that_scores_for_a_choice_saw_the_fold_it_is_judged_on(dataset, monkeypatch):
    """Nested cross-fitting: while outer fold f is held out, every few-shot head (the ones
    that score the other folds for tuning, and the one that scores f) was fitted
    without f's images."""
    import zsplg.calibration.search as search_module

    model = ColourModel(bias={0: 0.8})
    spec = load_class_spec(dataset.parent / "classes.txt")
    lset = reduced(dataset, model)
    folds = search_module.make_folds(len(lset), 3, 0)
    fitted: list[set[int]] = []
    real_fit = search_module._Problem.fit_head

    def recording_fit(self, image_indices):
        fitted.append({int(i) for i in image_indices})
        return real_fit(self, image_indices)

    monkeypatch.setattr(search_module._Problem, "fit_head", recording_fit)
    calibrate(lset, model, spec, mode="auto", folds=3, log=lambda m: None)
    # 3 plain cross-fitted heads, then 3 per held-out fold, in fold order
    assert len(fitted) == 3 + 9 + 1
    for fold in range(3):
        held = set(np.flatnonzero(folds == fold).tolist())
        for trained_on in fitted[3 + 3 * fold: 6 + 3 * fold]:
            assert trained_on and not trained_on & held
