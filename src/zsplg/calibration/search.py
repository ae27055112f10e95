"""Tune the labeller on the user's labelled images, with an honest estimate of the gain.

Zero-shot labelling guesses its background threshold, temperature, prompt
templates and class biases. Given labelled images, `calibrate` chooses them to
maximise the pseudo labels' mIoU, and can add a few-shot head
(`zsplg.calibration.fewshot`) fused with the zero-shot scores. Fitting can also
make the labeller worse: with few images per class, per-class offsets and heads
overfit. So mode "auto" also keeps the labeller's own defaults ("uncalibrated")
as a candidate, chosen like the others; nothing is fitted for it, and the file
then carries only the held-out reliability table. Every labelled image is
reduced once (`zsplg.calibration.labelled_set`), so a trial paints no pixel.

Honesty: the labelled images are split into k folds. For each fold, every
choice (templates, threshold, temperature, few-shot weight, offsets, the
few-shot head itself, and in mode "auto" the mode) is made on the other folds
only, and the fold is then labelled with it; the held-out confusions of all
folds give the cross-validated mIoU reported as "after". The cross-validation is
nested wherever a score chooses: the few-shot weight and offsets are tuned on
cross-fitted head scores of the other folds (each image scored by a head that saw
neither it nor the held-out fold), and the mode is the one an inner
cross-validation over the other folds prefers, so "after" is the estimate of the
whole procedure, not the best of three estimates. "before" is the uncalibrated
labeller on the same images.

The search, per fold: the grid of (templates, threshold, temperature[, weight])
with zero offsets, then coordinate ascent on one additive log-score offset per
class (column 0, background or "no class", included), twice over a fixed grid.
The final file (`zsplg.calibration.file`) is fitted the same way on all
labelled images.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from zsplg.calibration.fewshot import FewShotHead, fuse_log_scores, head_columns, softmax_rows
from zsplg.calibration.file import Calibration
from zsplg.calibration.labelled_set import LabelledSet, miou_of
from zsplg.calibration.reliability import BINS, PRIOR_ATOMS, count_correct, reliability_table
from zsplg.choices import CALIBRATION_MODES
from zsplg.data.classes import ClassSpec
from zsplg.labeling.labeller import text_prompts
from zsplg.labeling.painting import AtomPainter, ScoreColumns
from zsplg.metrics import ConfusionMatrix, compute_metrics, top_confusions
from zsplg.vl.base import DenseVisionLanguageModel, thresholded_softmax
from zsplg.vl.prompts import DEFAULT_TEMPLATES

MODES = CALIBRATION_MODES
AUTO_MODES = ("uncalibrated", "zero-shot", "few-shot", "fused")
# Candidate prompt-template sets; "default" is what uncalibrated labelling uses.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_TEMPLATES,
    "plain": ("a photo of a {}.", "{}"),
    "scene": ("a photo of a {}.", "a photo of the {} in the scene.", "there is a {} in the scene.",
              "a photo of a {} in the street.", "a photo of {} in a town."),
}
THRESHOLD_FACTORS = (0.75, 0.875, 1.0, 1.125, 1.25)
TEMPERATURE_FACTORS = (0.5, 1.0, 2.0)
FEWSHOT_WEIGHTS = (0.25, 0.5, 0.75)
# Offsets of +-2 (log-score) in 0.25 steps: chosen inside the labelled images only
# (benchmarks/fewshot_choice.py --choose offsets, against none and +-4; figures in
# benchmarks/README.md).
OFFSET_GRID = tuple(np.round(np.arange(-2.0, 2.01, 0.25), 2))
MIN_PURITY = 0.5  # a mask is a few-shot example of its majority class if at least this pure
# Few-shot head L2 and example weighting: chosen inside the labelled images only
# (benchmarks/fewshot_choice.py: 5-fold cross-validation on CamVid's 46, Kvasir-SEG's
# 100 and voc2012-mini's 38 labelled images; figures in benchmarks/README.md).
FEWSHOT_L2 = 0.1
# How a few-shot example counts: "area" (its pixel count, times purity for masks),
# "sqrt-area" or "uniform".
FEWSHOT_WEIGHTING = "sqrt-area"


def _example_weights(area: np.ndarray) -> np.ndarray:
    if FEWSHOT_WEIGHTING == "sqrt-area":
        return np.sqrt(area)
    if FEWSHOT_WEIGHTING == "uniform":
        return (area > 0).astype(np.float64)
    return area.astype(np.float64)


@dataclass
class _Setting:
    template_set: str
    threshold: float
    temperature: float
    weight: float  # few-shot weight (0: zero-shot only, 1: few-shot only)
    offsets: np.ndarray


class _Problem:
    """Cached scores of every candidate setting over the labelled set."""

    def __init__(self, lset: LabelledSet, model: DenseVisionLanguageModel, spec: ClassSpec,
                 overlap: str, uncovered: str, unknown: str, template_sets: dict,
                 folds: np.ndarray, log: Callable[[str], None]) -> None:
        self.lset = lset
        self.spec = spec
        self.overlap = overlap
        self.folds = folds
        columns = ScoreColumns.of(spec)
        self.column_ids = columns.ids
        self.column_to_id = columns.label_ids()
        self.unknown_best = columns.drops_no_class(unknown)
        self.uncovered_id = columns.uncovered_id(uncovered)
        scorer = zero_shot_scorer(model, torch.from_numpy(lset.pooled))
        self.zero_shot: dict[tuple, np.ndarray] = {}
        for name, templates in template_sets.items():
            _, prompts = text_prompts(spec, templates)
            text = torch.nn.functional.normalize(model.encode_text(prompts).float(), dim=-1)
            # Factor 1 (the backend's defaults) is always scored: it is the "before".
            for tf, sf in itertools.product(sorted({1.0, *THRESHOLD_FACTORS}),
                                            sorted({1.0, *TEMPERATURE_FACTORS})):
                threshold = round(model.default_threshold * tf, 6)
                temperature = round(model.default_temperature * sf, 6)
                probs = scorer(text, threshold, temperature)
                self.zero_shot[(name, threshold, temperature)] = np.log(
                    np.maximum(probs.float().numpy(), 1e-30)).astype(np.float32)
        log(f"scored {len(self.zero_shot)} zero-shot settings on {len(lset.pooled)} masks")
        self.default_key = ("default", round(model.default_threshold, 6),
                            round(model.default_temperature, 6))

    # ---- few-shot
    def fewshot_examples(self, image_indices: np.ndarray):
        """Features, labels and weights of the chosen images' pure masks and gt regions."""
        feats, labels, weights = [], [], []
        for i in image_indices:
            image = self.lset.images[i]
            counts = image.mask_gt()
            total = counts.sum(axis=1)
            keep = total > 0
            purity = np.where(keep, counts.max(axis=1) / np.maximum(total, 1), 0)
            keep &= purity >= MIN_PURITY
            feats.append(image.pooled[keep])
            labels.append(counts.argmax(axis=1)[keep])
            weights.append(_example_weights(total[keep] * purity[keep]))
            if len(image.region_class):
                feats.append(image.region_pooled)
                labels.append(image.region_class)
                region_area = image.atom_gt.sum(axis=0)[image.region_class]
                weights.append(_example_weights(region_area))
        return np.concatenate(feats), np.concatenate(labels), np.concatenate(weights)

    def fit_head(self, image_indices: np.ndarray) -> FewShotHead:
        x, y, w = self.fewshot_examples(image_indices)
        return FewShotHead.fit(x, y, self.spec.num_classes, sample_weight=w, l2=FEWSHOT_L2)

    def cross_fitted_fewshot(self, log: Callable[[str], None],
                             step: Callable[[], None] = lambda: None,
                             held_out: int | None = None) -> np.ndarray:
        """(M, K) few-shot column scores, each image scored by a head that never saw it.

        held_out: an outer fold kept out of every head: the other folds are cross-fitted
        among themselves, and the held-out fold is scored by a head fitted on all of them,
        so scores that choose a setting never carry that fold's labels."""
        out = np.zeros((len(self.lset.pooled), len(self.column_ids)), dtype=np.float32)
        inside = self.folds != held_out if held_out is not None else np.ones_like(self.folds,
                                                                                    bool)
        for fold in np.unique(self.folds):
            train = np.flatnonzero(inside & (self.folds != fold))
            if fold == held_out or len(train) == 0:  # (two folds: no inner split exists)
                train = np.flatnonzero(inside)
            head = self.fit_head(train)
            rows = self.lset.masks_of_images(np.flatnonzero(self.folds == fold))
            out[rows] = head_columns(head.log_probs(self.lset.pooled[rows]), self.column_ids)
            if held_out is None:
                log(f"few-shot head for fold {fold + 1}: {len(train)} training images")
            step()
        return out

    # ---- scoring
    def logits(self, setting: _Setting, fewshot: np.ndarray | None,
               rows: np.ndarray | slice = slice(None), offsets: bool = True) -> np.ndarray:
        """Fused log-scores of the chosen masks (softmax gives the annotator's probabilities)."""
        zero_shot = None
        if setting.weight < 1.0:
            zero_shot = self.zero_shot[(setting.template_set, setting.threshold,
                                        setting.temperature)][rows]
        few = fewshot[rows] if fewshot is not None and setting.weight > 0 else None
        shift = setting.offsets if offsets else np.zeros_like(setting.offsets)
        logits = fuse_log_scores(zero_shot, few, setting.weight, shift)
        if self.unknown_best:  # the annotator drops the "no class" column: never pick it
            logits[:, 0] = -np.inf
        return logits

    def confusion(self, setting: _Setting, fewshot: np.ndarray | None,
                  atoms: np.ndarray | None = None) -> np.ndarray:
        probs = softmax_rows(self.logits(setting, fewshot))
        labels = self.lset.atom_labels(probs, self.column_to_id, self.overlap, self.uncovered_id)
        return self.lset.confusion(labels, atoms)

    def fit(self, image_indices: np.ndarray, mode: str, fewshot: np.ndarray | None,
            tune_offsets: bool = True) -> _Setting:
        """Best setting on the given images (grid, then offsets by coordinate ascent)."""
        zeros = np.zeros(len(self.column_ids), dtype=np.float32)
        if mode == "uncalibrated":  # the labeller's defaults: nothing to fit
            return _Setting(*self.default_key, weight=0.0, offsets=zeros)
        sub = _Subset(self, image_indices)
        weights = {"zero-shot": (0.0,), "few-shot": (1.0,), "fused": FEWSHOT_WEIGHTS}[mode]
        keys = [self.default_key] if mode == "few-shot" else list(self.zero_shot)
        best, best_score = None, -1.0
        for key, weight in itertools.product(keys, weights):
            setting = _Setting(*key, weight=weight, offsets=zeros)
            score = sub.score(setting, fewshot)
            if score > best_score + 1e-9:
                best, best_score = setting, score
        assert best is not None
        if tune_offsets:
            best = sub.tune_offsets(best, fewshot, best_score)
        return best


class _Subset:
    """The masks and atoms of some images, scored quickly."""

    def __init__(self, problem: _Problem, image_indices: np.ndarray) -> None:
        self.problem = problem
        lset = problem.lset
        self.rows = lset.masks_of_images(image_indices)
        self.atoms = lset.atoms_of_images(image_indices)
        self.painter = AtomPainter(lset.members[self.atoms][:, self.rows], lset.areas[self.rows])
        self.atom_gt = lset.atom_gt[self.atoms]

    def score(self, setting: _Setting, fewshot: np.ndarray | None) -> float:
        return self.score_logits(self.problem.logits(setting, fewshot, self.rows))

    def score_logits(self, logits: np.ndarray) -> float:
        """mIoU of the subset's atoms labelled from (masks, K) fused log-scores."""
        p = self.problem
        labels = self.painter.labels(softmax_rows(logits), p.column_to_id, p.overlap,
                                     p.uncovered_id)
        c = p.lset.num_classes
        labels = np.where((labels < 0) | (labels >= c), c, labels)
        onehot = sp.csr_matrix((np.ones(len(labels), dtype=np.float64),
                                (labels, np.arange(len(labels)))), shape=(c + 1, len(labels)))
        return miou_of(np.asarray(onehot @ self.atom_gt).T)

    def tune_offsets(self, setting: _Setting, fewshot: np.ndarray | None,
                     score: float) -> _Setting:
        """Coordinate ascent on one additive offset per column, over OFFSET_GRID."""
        base = self.problem.logits(setting, fewshot, self.rows, offsets=False)
        offsets = setting.offsets.copy()
        for _ in range(2):
            changed = False
            for column in range(len(offsets)):
                for value in OFFSET_GRID:
                    if value == offsets[column]:
                        continue
                    trial = offsets.copy()
                    trial[column] = value
                    s = self.score_logits(base + trial[None, :])
                    if s > score + 1e-6:
                        score, offsets, changed = s, trial, True
            if not changed:
                break
        return _Setting(setting.template_set, setting.threshold, setting.temperature,
                        setting.weight, offsets)


def _quiet(message: str) -> None:
    """The default `log`: the search says nothing unless asked."""


def zero_shot_scorer(model: DenseVisionLanguageModel, pooled: torch.Tensor):
    """(text, threshold, temperature) -> the model's (M, K) probabilities for `pooled`.

    Calibration asks for dozens of thresholds on the same masks. ConSE's label
    transfer is its classifier's ImageNet distribution times a small transfer
    matrix, so the classifier runs once here instead of once per trial (the
    result equals `class_probabilities`); any other backend is called as is.
    """
    from zsplg.vl.conse import ConSEBackend

    if isinstance(model, ConSEBackend) and model.scoring == "transfer":
        with torch.no_grad():
            imagenet = model.model.classifier(pooled.to(model.device)).softmax(dim=-1).cpu()

        def conse(text: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
            transfer = thresholded_softmax(model.label_vectors @ text.T, threshold, temperature)
            return imagenet @ transfer

        return conse

    def generic(text: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
        with torch.no_grad():
            return model.class_probabilities(pooled, text, threshold, temperature)

    return generic


def make_folds(num_images: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per image: a seeded shuffle cut into near-equal parts."""
    if num_images < 2:
        raise ValueError("calibration needs at least 2 labelled images")
    folds = max(2, min(folds, num_images))
    order = np.random.default_rng(seed).permutation(num_images)
    assignment = np.empty(num_images, dtype=np.int64)
    assignment[order] = np.arange(num_images) % folds
    return assignment


def _metrics(confusion: np.ndarray, spec: ClassSpec) -> dict:
    cm = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    cm.matrix[:] = confusion
    metrics = compute_metrics(cm, spec.names)
    return {"miou": round(metrics["miou"], 2), "coverage": round(metrics["coverage"], 2),
            "per_class_iou": {c["name"]: None if c["iou"] is None else round(c["iou"], 2)
                              for c in metrics["per_class"]},
            "top_confusions": [{k: (round(v, 2) if isinstance(v, float) else v)
                                for k, v in t.items()} for t in top_confusions(cm, spec.names)]}


def calibrate(lset: LabelledSet, model: DenseVisionLanguageModel, spec: ClassSpec,
              overlap: str = "average", uncovered: str = "ignore", unknown: str = "ignore",
              mode: str = "auto", folds: int = 5, seed: int = 0,
              template_sets: dict[str, tuple[str, ...]] | None = None,
              log: Callable[[str], None] = _quiet,
              progress: Callable[[int, int], None] | None = None) -> Calibration:
    """Cross-validate every mode asked for, then fit the chosen one on all images.

    mode "auto" compares the uncalibrated defaults, zero-shot, few-shot and fused
    by cross-validated mIoU and keeps the best; the report holds every mode's
    figures.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    # the defaults first: on a tie, nothing fitted beats something fitted
    modes = AUTO_MODES if mode == "auto" else (mode,)
    fitted = calibrate_modes(lset, model, spec, modes, overlap, uncovered, unknown, folds, seed,
                             template_sets, log, final="best", progress=progress)
    return next(iter(fitted.values()))


def calibrate_modes(lset: LabelledSet, model: DenseVisionLanguageModel, spec: ClassSpec,
                    modes: tuple[str, ...], overlap: str = "average", uncovered: str = "ignore",
                    unknown: str = "ignore", folds: int = 5, seed: int = 0,
                    template_sets: dict[str, tuple[str, ...]] | None = None,
                    log: Callable[[str], None] = _quiet,
                    final: str = "all",
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Calibration]:
    """Cross-validated figures for each mode, and the calibration fitted on all
    images for each mode (final="all") or for the best one only (final="best").

    Every returned Calibration carries the same report (all modes' figures);
    report["chosen"] is the best mode by cross-validated mIoU. progress(done,
    total) is called after each head and each search (they take similar time).
    """
    started = time.perf_counter()
    template_sets = template_sets or TEMPLATE_SETS
    assignment = make_folds(len(lset), folds, seed)
    num_folds = int(assignment.max() + 1)
    uses_head = bool(set(modes) - {"zero-shot", "uncalibrated"})
    choosing = len(modes) > 1
    total_steps = ((num_folds * (num_folds + 1) if uses_head else 0)
                   + len(modes) * num_folds * (num_folds if choosing else 1)
                   + (1 if final == "best" else len(modes)))
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total_steps)

    problem = _Problem(lset, model, spec, overlap, uncovered, unknown, template_sets,
                       assignment, log)
    fewshot = problem.cross_fitted_fewshot(log, step) if uses_head else None
    everything = np.arange(len(lset))
    zeros = np.zeros(len(problem.column_ids), dtype=np.float32)
    before = problem.confusion(_Setting(*problem.default_key, weight=0.0, offsets=zeros), None)
    report: dict = {"images": len(lset), "folds": num_folds, "seed": seed,
                    "before": _metrics(before, spec), "modes": {}}
    log(f"uncalibrated zero-shot: mIoU {report['before']['miou']:.2f} on {len(lset)} images")
    # Nested cross-validation. For each outer fold: few-shot scores that never saw it,
    # every mode fitted on the other folds and scored on it, and (when several modes
    # compete) the mode that an inner cross-validation over the other folds alone would
    # choose. The chosen modes' outer confusions are the estimate of the whole procedure.
    per_mode = {name: np.zeros_like(before) for name in modes}
    procedure = np.zeros_like(before)
    right = np.zeros((lset.num_classes, BINS))  # held-out pixels right / painted per cell
    painted = np.zeros_like(right)
    selected = []
    for fold in range(num_folds):
        inside = np.flatnonzero(assignment != fold)
        held = lset.atoms_of_images(np.flatnonzero(assignment == fold))
        scores = problem.cross_fitted_fewshot(log, step, held_out=fold) if uses_head else None
        outer, fitted = {}, {}
        for name in modes:
            fitted[name] = problem.fit(inside, name, scores)
            outer[name] = problem.confusion(fitted[name], scores, held)
            per_mode[name] += outer[name]
            step()
        if choosing:
            inner = {}
            others = np.unique(assignment[inside])
            for name in modes:
                total = np.zeros_like(before)
                for other in others:
                    fit_on = np.flatnonzero((assignment != fold) & (assignment != other))
                    if len(others) < 2:  # two folds: choose on the other fold in-sample
                        fit_on = inside
                    total += problem.confusion(
                        problem.fit(fit_on, name, scores), scores,
                        lset.atoms_of_images(np.flatnonzero(assignment == other)))
                    step()
                inner[name] = miou_of(total)
            pick = max(modes, key=lambda m: inner[m])
        else:
            pick = modes[0]
        selected.append(pick)
        procedure += outer[pick]
        # the held-out fold as the procedure labels it, for the reliability table
        probs = softmax_rows(problem.logits(fitted[pick], scores))
        labels = lset.atom_labels(probs, problem.column_to_id, overlap, problem.uncovered_id)
        confidence = lset.atom_confidence(probs, overlap)
        fold_correct, fold_total = count_correct(labels[held], confidence[held],
                                                 lset.atom_gt[held])
        right, painted = right + fold_correct, painted + fold_total
    for name in modes:
        report["modes"][name] = _metrics(per_mode[name], spec)
        log(f"{name}: cross-validated mIoU {report['modes'][name]['miou']:.2f}")
    chosen = max(modes, key=lambda m: report["modes"][m]["miou"])
    report["chosen"] = chosen
    # "after" estimates what choosing did, not the best of the modes' estimates
    report["after"] = _metrics(procedure, spec)
    report["selected_per_fold"] = selected
    atom_pixels = lset.atom_gt.sum(axis=1)
    prior = PRIOR_ATOMS * float(np.median(atom_pixels[atom_pixels > 0])) if (
        atom_pixels > 0).any() else 1.0
    reliability = reliability_table(right, painted, prior)
    if choosing:
        log(f"choosing among {', '.join(modes)} (nested): mIoU "
            f"{report['after']['miou']:.2f}; chose {chosen}")
    head = problem.fit_head(everything) if uses_head else None
    out = {}
    for name in (chosen,) if final == "best" else modes:
        setting = problem.fit(everything, name, fewshot)
        step()
        out[name] = Calibration(
            mode=name, templates=list(template_sets[setting.template_set]),
            template_set=setting.template_set, background_threshold=float(setting.threshold),
            temperature=float(setting.temperature),
            offsets=[round(float(v), 4) for v in setting.offsets],
            column_ids=problem.column_ids, fewshot_weight=float(setting.weight),
            head=None if setting.weight == 0 or head is None else head.to_dict(),
            report=report, reliability=reliability)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return out


def uncalibrated(model: DenseVisionLanguageModel, spec: ClassSpec) -> Calibration:
    """The labeller's defaults as a Calibration (for scoring it like the others)."""
    columns = ScoreColumns.of(spec).ids
    return Calibration(mode="zero-shot", templates=list(DEFAULT_TEMPLATES),
                       template_set="default", background_threshold=model.default_threshold,
                       temperature=model.default_temperature, offsets=[0.0] * len(columns),
                       column_ids=columns)


def score_calibration(calibration: Calibration, lset: LabelledSet,
                      model: DenseVisionLanguageModel, spec: ClassSpec, overlap: str = "average",
                      uncovered: str = "ignore", unknown: str = "ignore") -> dict:
    """Metrics of labelling `lset`'s images with a calibration (as `zsplg label` would)."""
    _, prompts = text_prompts(spec, tuple(calibration.templates))
    text = torch.nn.functional.normalize(model.encode_text(prompts).float(), dim=-1)
    probs = calibration.calibrated_model(model).class_probabilities(
        torch.from_numpy(lset.pooled), text, calibration.background_threshold,
        calibration.temperature).numpy()
    columns = ScoreColumns.of(spec)
    if columns.drops_no_class(unknown):
        probs[:, 0] = 0.0
    labels = lset.atom_labels(probs, columns.label_ids(), overlap, columns.uncovered_id(uncovered))
    return _metrics(lset.confusion(labels), spec)
