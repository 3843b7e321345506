"""Embedding-level distillation of a frozen teacher into a (binarized) student."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from distill.losses import WeightedLoss
from faces.callbacks import check_finite
from faces.transforms import augment, normalise


class EmbeddingDistiller(pl.LightningModule):
    """Student learns the teacher's embeddings of the same augmented batch.

    The teacher is frozen (eval mode, no gradients). Adam with linear decay to zero, the
    usual setting for binary networks (Bi-Real Net, QuickNet). Batches may carry labels; they
    are ignored, so unlabelled faces are as useful as labelled ones.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        losses: dict[str, float],
        lr: float = 2e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = student
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.loss = WeightedLoss(losses)
        self.lr, self.weight_decay = lr, weight_decay

    def train(self, mode: bool = True) -> EmbeddingDistiller:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = normalise(augment(images)).to(self.device)
        with torch.no_grad():
            target = self.teacher(x)
        total, parts = self.loss(self.model(x), target)
        check_finite(total, self.global_step, batch_idx)
        self.log("train.loss", total, on_step=False, on_epoch=True, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train.loss_{name}", value, on_step=False, on_epoch=True)
        return total

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
