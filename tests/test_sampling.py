"""A fixed share of labelled faces in every batch."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from faces.sampling import LabelledShareSampler


def test_each_epoch_has_the_share_and_covers_each_set_evenly() -> None:
    sampler = LabelledShareSampler(n_labelled=10, n_total=100, labelled_share=0.5, seed=3)
    sampler.set_epoch(0)
    epoch = list(sampler)
    assert len(epoch) == len(sampler) == 100
    labelled = [i for i in epoch if i < 10]
    assert len(labelled) == 50
    # successive permutations: each labelled row 5 times, each unlabelled row at most once
    assert set(Counter(labelled).values()) == {5}
    unlabelled = [i for i in epoch if i >= 10]
    assert len(unlabelled) == len(set(unlabelled)) == 50 and min(unlabelled) >= 10
    assert list(sampler) == epoch  # the same epoch again: the same order
    sampler.set_epoch(1)
    assert list(sampler) != epoch


def test_batches_hold_about_the_share() -> None:
    data = TensorDataset(torch.arange(1000))
    sampler = LabelledShareSampler(100, 1000, 0.25, seed=0)
    loader = DataLoader(data, batch_size=40, sampler=sampler, drop_last=True)
    shares = [float((b[0] < 100).float().mean()) for b in loader]
    assert len(shares) == 25
    assert sum(shares) / len(shares) == pytest.approx(0.25)
    assert min(shares) > 0.05 and max(shares) < 0.5  # mixed, not sorted by set


def test_iterating_without_set_epoch_advances_the_epoch() -> None:
    sampler = LabelledShareSampler(5, 20, 0.5)
    assert list(sampler) != list(sampler)


@pytest.mark.parametrize(
    ("n_labelled", "n_total", "share", "match"),
    [
        (0, 10, 0.5, "labelled"),
        (10, 10, 0.5, "labelled"),
        (5, 10, 1.0, "share"),
        (5, 10, 0.0, "share"),
    ],
)
def test_bad_arguments_are_named(n_labelled: int, n_total: int, share: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LabelledShareSampler(n_labelled, n_total, share)
