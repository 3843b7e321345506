"""Distillation losses, registered by name (torchdistill-style) and combinable with weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from faces.registry import Registry

DISTILL_LOSSES = Registry("distillation loss")


@DISTILL_LOSSES.register("cosine")
class CosineEmbeddingLoss(nn.Module):
    """1 - cos(student, teacher) on embeddings, averaged over the batch."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


@DISTILL_LOSSES.register("l2")
class NormalisedL2Loss(nn.Module):
    """Squared L2 distance between L2-normalised student and teacher embeddings."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(1).mean()


class WeightedLoss(nn.Module):
    """sum_i w_i * loss_i(student, teacher) over registered losses; returns (total, parts)."""

    def __init__(self, terms: dict[str, float]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("at least one distillation loss is needed")
        self.weights = dict(terms)
        self.losses = nn.ModuleDict({name: DISTILL_LOSSES.create(name) for name in terms})

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: loss(student, teacher) for name, loss in self.losses.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts
