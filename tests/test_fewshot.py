"""The few-shot head, score fusion and the calibrated backend wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsplg.calibration.fewshot import (
    LOG_FLOOR,
    CalibratedModel,
    FewShotHead,
    fuse_log_scores,
    head_columns,
    softmax_rows,
)
from zsplg.vl.base import thresholded_softmax


def blobs(rng: np.random.Generator, per_class: int, centres: np.ndarray):
    labels = np.repeat(np.arange(len(centres)), per_class)
    features = centres[labels] + rng.normal(0, 0.3, (len(labels), centres.shape[1]))
    return features.astype(np.float32), labels


def test_head_learns_separable_classes_and_never_predicts_an_absent_one():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2, (3, 8))
    x, y = blobs(rng, 40, centres)
    head = FewShotHead.fit(x, y + 1, num_classes=5)  # ids 1..3 present, 0 and 4 absent
    test_x, test_y = blobs(rng, 20, centres)
    log_probs = head.log_probs(test_x)
    assert log_probs.shape == (60, 5)
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=1), 1.0, atol=1e-5)
    assert (log_probs.argmax(axis=1) == test_y + 1).mean() > 0.95
    assert np.exp(log_probs[:, [0, 4]]).max() < 1e-6


def test_head_balances_classes_so_a_rare_class_still_wins_its_own_examples():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [1.2, 1.2]])
    common, _ = blobs(rng, 400, centres[:1])
    rare, _ = blobs(rng, 8, centres[1:])
    x = np.concatenate([common, rare])
    y = np.array([0] * 400 + [1] * 8)
    head = FewShotHead.fit(x, y, num_classes=2)
    assert head.log_probs(centres[1:].astype(np.float32)).argmax() == 1


def test_head_round_trips_through_its_dict():
    rng = np.random.default_rng(2)
    x, y = blobs(rng, 10, rng.normal(0, 1, (2, 4)))
    head = FewShotHead.fit(x, y, num_classes=2, sample_weight=np.arange(20) + 1.0)
    again = FewShotHead.from_dict(head.to_dict())
    np.testing.assert_array_equal(again.log_probs(x), head.log_probs(x))
    with pytest.raises(ValueError, match="kind"):
        FewShotHead.from_dict({"kind": "forest"})


def test_head_rejects_bad_training_data():
    with pytest.raises(ValueError):
        FewShotHead.fit(np.zeros((3, 2)), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="out of range"):
        FewShotHead.fit(np.zeros((2, 2)), np.array([0, 2]), 2)


def test_head_columns_follow_the_annotator_layout():
    log_probs = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32))
    with_background = head_columns(log_probs, [0, 1, 2, 3])
    np.testing.assert_allclose(with_background, log_probs)
    without = head_columns(log_probs, [None, 0, 1, 2, 3])  # spec without background
    assert without[0, 0] == LOG_FLOOR
    np.testing.assert_allclose(without[0, 1:], log_probs[0])


def test_fusion_weights_and_offsets():
    zero = np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32))
    few = np.log(np.array([[0.1, 0.1, 0.8]], dtype=np.float32))
    offsets = np.zeros(3, dtype=np.float32)
    np.testing.assert_allclose(softmax_rows(fuse_log_scores(zero, few, 0.0, offsets)),
                               np.exp(zero), atol=1e-6)
    np.testing.assert_allclose(softmax_rows(fuse_log_scores(zero, few, 1.0, offsets)),
                               np.exp(few), atol=1e-6)
    half = softmax_rows(fuse_log_scores(zero, few, 0.5, offsets))
    expected = np.sqrt(np.exp(zero) * np.exp(few))
    np.testing.assert_allclose(half, expected / expected.sum(), atol=1e-6)
    shifted = softmax_rows(fuse_log_scores(zero, None, 0.0, np.array([0.0, np.log(7.0), 0.0])))
    np.testing.assert_allclose(shifted, [[0.7 / 2.2, 1.4 / 2.2, 0.1 / 2.2]], atol=1e-6)


class Base:
    name = "base"
    default_threshold = 0.3
    default_temperature = 0.1

    def encode_image(self, image):
        return torch.ones(2, 1, 1)

    def encode_text(self, prompts):
        return torch.eye(2)

    def class_probabilities(self, pooled, text, threshold, temperature):
        return thresholded_softmax(pooled @ text.T, threshold, temperature)

    def config(self):
        return {"name": "base"}


def test_calibrated_model_without_changes_is_the_base_model():
    base = Base()
    pooled = torch.tensor([[0.9, 0.1], [0.2, 0.25], [0.1, 0.6]])
    text = torch.eye(2)
    model = CalibratedModel(base, [0, 1, 2], np.zeros(3))
    torch.testing.assert_close(model.class_probabilities(pooled, text, 0.3, 0.1),
                               base.class_probabilities(pooled, text, 0.3, 0.1))
    assert model.config()["calibrated"] is True
    assert model.default_threshold == base.default_threshold


def test_calibrated_model_with_only_a_head_follows_the_head():
    rng = np.random.default_rng(3)
    centres = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    x, y = blobs(rng, 20, centres)
    head = FewShotHead.fit(x, y, num_classes=3)
    model = CalibratedModel(Base(), [0, 1, 2], np.zeros(3), head, fewshot_weight=1.0)
    probs = model.class_probabilities(torch.from_numpy(centres.astype(np.float32)),
                                      torch.eye(2), 0.3, 0.1)
    assert probs.argmax(dim=1).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="head"):
        CalibratedModel(Base(), [0, 1, 2], np.zeros(3), None, fewshot_weight=0.5)
    with pytest.raises(ValueError, match="offset"):
        CalibratedModel(Base(), [0, 1, 2], np.zeros(2))
