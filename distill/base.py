"""What every distillation loss is: the registry, the base class and the data context."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from faces.registry import Registry

DISTILL_LOSSES = Registry("distillation loss")


@dataclass
class LossContext:
    """What losses with class heads need: sizes and the teacher's class centres.

    ``centres``: (C, D) L2-normalised class centres of the teacher (its margin head's weights,
    or the normalised mean teacher embedding of each training identity); ``spread``: (C,) the
    mean cosine between the teacher's embeddings of a class's images and its centre (1 = all
    on the centre; the smaller, the wider the class is spread); ``bank``: (M, D) the teacher's
    L2-normalised embeddings of the training images (labelled and unlabelled, each image and
    its mirror), for losses that compare a face with every other face.
    """

    embedding_size: int
    num_classes: int = 0
    centres: torch.Tensor | None = None
    spread: torch.Tensor | None = None
    bank: torch.Tensor | None = None


class DistillLoss(nn.Module, ABC):
    """Base class: ``forward(student, teacher, labels)`` -> a scalar loss."""

    uses_teacher: ClassVar[bool] = True
    uses_labels: ClassVar[bool] = False
    uses_centres: ClassVar[bool] = False
    uses_bank: ClassVar[bool] = False

    def bind(self, context: LossContext) -> None:
        """Build what depends on the data (class heads); called once before training."""

    @abstractmethod
    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """The loss of a batch: student embeddings, teacher targets (None for teacher-free
        losses) and identity labels (-1: unlabelled; None when no loss needs them)."""
