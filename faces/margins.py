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
        return self.logits(emb, self.weight, labels)

    def train_logits(
        self, emb: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) for cross-entropy during training."""
        return self(emb, labels), labels

    def logits(
        self, emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """Margin logits against the class centres ``weight`` (rows), labels index rows.

        Always float32, also under mixed precision: in float16 the clamp below 1 rounds to 1
        (where acos has no gradient) and the margin would be scattered into a half tensor.
        """
        with torch.autocast(emb.device.type, enabled=False):
            return self._logits(emb.float(), weight.float(), labels)

    def _logits(
        self, emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        cos = F.linear(F.normalize(emb), F.normalize(weight)).clamp(-1 + 1e-7, 1 - 1e-7)
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


class PartialFC(nn.Module):
    """PartialFC (An et al. 2022): each training step uses the centres of the batch's people
    and a random sample of the others, ``sample_rate`` of all classes in total.

    For datasets with 100k+ identities: the logits and the centre gradients of one step cover
    a fraction of the classes. Evaluation (``forward``) uses every centre.
    """

    def __init__(self, head: CombinedMarginHead, sample_rate: float) -> None:
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.head, self.sample_rate = head, sample_rate

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(emb, labels)

    def train_logits(
        self, emb: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the sampled centres and the labels re-indexed into that sample."""
        classes = self.head.weight.shape[0]
        positive = labels.unique()
        k = max(math.ceil(self.sample_rate * classes), len(positive))
        if k >= classes:
            return self.head(emb, labels), labels
        score = torch.rand(classes, device=labels.device)
        score[positive] = 2.0  # the batch's people are always in the sample
        index = score.topk(k).indices.sort().values
        targets = torch.searchsorted(index, labels)
        return self.head.logits(emb, self.head.weight[index], targets), targets


def create_margin_head(
    name: str, embedding_size: int, num_classes: int, sample_rate: float = 1.0, **kwargs: float
) -> nn.Module:
    """A registered margin head, wrapped in PartialFC when ``sample_rate`` < 1."""
    head = MARGIN_HEADS.create(
        name, embedding_size=embedding_size, num_classes=num_classes, **kwargs
    )
    return head if sample_rate >= 1 else PartialFC(head, sample_rate)


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
