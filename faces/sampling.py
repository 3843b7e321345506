"""Sampling labelled and unlabelled faces in a fixed proportion."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class LabelledShareSampler(Sampler[int]):
    """Indices of a dataset whose first ``n_labelled`` rows are labelled, the rest not.

    Each epoch yields ``n_total`` indices (the epoch of plain shuffling: same steps per
    epoch) of which ``round(labelled_share * n_total)`` are labelled rows and the others
    unlabelled ones, in random order, so that every batch holds about that share of
    labelled faces whatever the sizes of the two sets. Within each set, indices are drawn
    by successive random permutations (every row once before any row twice). Deterministic
    for a ``seed`` and epoch (``set_epoch``; otherwise each iteration advances the epoch).
    """

    def __init__(self, n_labelled: int, n_total: int, labelled_share: float, seed: int = 0):
        if not 0 < n_labelled < n_total:
            raise ValueError(
                f"need labelled and unlabelled rows, got {n_labelled} labelled of {n_total}"
            )
        if not 0 < labelled_share < 1:
            raise ValueError(f"labelled_share must be in (0, 1), got {labelled_share}")
        self.n_labelled, self.n_total = n_labelled, n_total
        self.share, self.seed, self.epoch = labelled_share, seed, 0
        self._epoch_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_set = epoch, True

    def __len__(self) -> int:
        return self.n_total

    @staticmethod
    def _draw(n: int, k: int, g: torch.Generator) -> torch.Tensor:
        rounds = -(-k // n)
        return torch.cat([torch.randperm(n, generator=g) for _ in range(rounds)])[:k]

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if not self._epoch_set:
            self.epoch += 1
        k = round(self.share * self.n_total)
        labelled = self._draw(self.n_labelled, k, g)
        n_unlabelled = self.n_total - self.n_labelled
        unlabelled = self.n_labelled + self._draw(n_unlabelled, self.n_total - k, g)
        order = torch.cat([labelled, unlabelled])[torch.randperm(self.n_total, generator=g)]
        return iter(order.tolist())
