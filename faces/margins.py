"""Margin-based classification heads for face recognition (ArcFace, CosFace, combined)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from faces.registry import Registry

MARGIN_HEADS = Registry("margin head")


class CombinedMarginHead(nn.Module):
    """Normalised class centres W and logits s * (cos(m1 * theta + m2) - m3) for the true class.

    ArcFace is (1, m, 0), CosFace (1, 0, m). ``forward(emb, labels)`` returns logits for
    cross-entropy; ``labels=None`` returns plain scaled cosines.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        if labels is None:
            return cos * self.s
        target = cos.gather(1, labels[:, None])
        theta = torch.acos(target)
        margin_theta = self.m1 * theta + self.m2
        marked = torch.cos(margin_theta) - self.m3
        # Past pi the margin curve turns back up: fall back to a linear penalty (InsightFace).
        marked = torch.where(
            margin_theta < math.pi, marked, target - self.m3 - self.m2 * math.sin(self.m2)
        )
        return cos.scatter(1, labels[:, None], marked) * self.s


@MARGIN_HEADS.register("arcface")
def arcface(
    embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5
) -> CombinedMarginHead:
    """ArcFace additive angular margin (Deng et al. 2019)."""
    return CombinedMarginHead(embedding_size, num_classes, s=s, m2=m)


@MARGIN_HEADS.register("cosface")
def cosface(
    embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35
) -> CombinedMarginHead:
    """CosFace additive cosine margin (Wang et al. 2018)."""
    return CombinedMarginHead(embedding_size, num_classes, s=s, m2=0.0, m3=m)


@MARGIN_HEADS.register("combined")
def combined(
    embedding_size: int,
    num_classes: int,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.3,
    m3: float = 0.2,
) -> CombinedMarginHead:
    """The combined margin (m1, m2, m3) of InsightFace."""
    return CombinedMarginHead(embedding_size, num_classes, s=s, m1=m1, m2=m2, m3=m3)
