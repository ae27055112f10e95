"""Data order, learning-rate schedule and sliding-window inference."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from zsplg.train.inference import predict_logits
from zsplg.train.loop import poly_lr
from zsplg.train.sampling import StreamSampler


def _take(sampler: StreamSampler, n: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), n))


def test_every_sample_once_per_epoch_and_epochs_differ() -> None:
    pairs = _take(StreamSampler(10, 5, seed=0, stream=0), 20)
    first, second = [i for _, i in pairs[:10]], [i for _, i in pairs[10:]]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second
    assert [e for e, _ in pairs] == [0] * 10 + [1] * 10


def test_resume_start_batch_continues_the_same_stream() -> None:
    full = _take(StreamSampler(7, 3, seed=4, stream=1), 30)
    resumed = _take(StreamSampler(7, 3, seed=4, stream=1, start_batch=4), 18)
    assert resumed == full[12:30]


def test_streams_and_seeds_give_different_orders() -> None:
    a = _take(StreamSampler(50, 5, seed=0, stream=0), 50)
    assert a != _take(StreamSampler(50, 5, seed=0, stream=1), 50)
    assert a != _take(StreamSampler(50, 5, seed=1, stream=0), 50)


def test_ranks_split_each_global_batch() -> None:
    single = _take(StreamSampler(12, 4, seed=0, stream=0), 24)
    r0 = _take(StreamSampler(12, 2, seed=0, stream=0, rank=0, world_size=2), 12)
    r1 = _take(StreamSampler(12, 2, seed=0, stream=0, rank=1, world_size=2), 12)
    # global batch b: rank 0 takes its first half, rank 1 the second half
    for b in range(6):
        assert single[4 * b:4 * b + 2] == r0[2 * b:2 * b + 2]
        assert single[4 * b + 2:4 * b + 4] == r1[2 * b:2 * b + 2]


def test_empty_dataset_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        StreamSampler(0, 2, seed=0, stream=0)


def test_poly_lr() -> None:
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_sliding_window_equals_whole_for_a_pointwise_model() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1).eval()
    image = torch.randn(1, 3, 37, 53)
    whole = predict_logits(model, image, "whole")
    sliding = predict_logits(model, image, "sliding", window=16, stride=10)
    assert sliding.shape == whole.shape
    torch.testing.assert_close(sliding, whole, rtol=1e-5, atol=1e-5)
    small = predict_logits(model, torch.randn(1, 3, 8, 9), "sliding", window=16)
    assert small.shape == (1, 4, 8, 9)
    with pytest.raises(ValueError, match="mode"):
        predict_logits(model, image, "tiles")
