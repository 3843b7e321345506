"""Teacher training with a margin head (ArcFace by default) as a Lightning module."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from faces.callbacks import check_finite
from faces.margins import create_margin_head
from faces.transforms import augment, normalise


def margin_loss(
    head: nn.Module, emb: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of a margin head's training logits, and their top-1 accuracy.

    The training objective of teachers, and of students trained without a teacher
    (``distill.losses: {arcface: ...}``).
    """
    logits, targets = head.train_logits(emb, labels)
    return F.cross_entropy(logits, targets), (logits.argmax(1) == targets).float().mean()


class MarginTrainer(pl.LightningModule):
    """Trains ``model`` (images -> embeddings) with a margin head over ``num_classes`` people.

    AdamW or SGD, linear warm-up then cosine decay per step, gradient clipping is set on the
    Trainer. ``model`` is the attribute the pipeline exports after training.
    """

    def __init__(
        self,
        model: nn.Module,
        embedding_size: int,
        num_classes: int,
        head: dict[str, Any],
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        schedule: str = "cosine",
        momentum: float = 0.9,
        batch_augment: bool = False,
    ) -> None:
        super().__init__()
        self.batch_augment = batch_augment  # augment each batch here (on a GPU)
        self.model = model
        head = dict(head)
        self.head = create_margin_head(head.pop("name"), embedding_size, num_classes, **head)
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.warmup_epochs = warmup_epochs
        if schedule not in ("cosine", "poly"):
            raise ValueError(f"unknown schedule {schedule!r} (cosine or poly)")
        self.schedule, self.momentum = schedule, momentum

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if len(batch) == 4:  # faces.streaming.TrainingFaces: mirrored (and augmented) already
            images, _, labels, _ = batch
            if self.batch_augment:
                images = augment(images.to(self.device), flip=False)
        else:
            images, labels = batch
            images = augment(images)
        emb = self.model(normalise(images).to(self.device))
        loss, acc = margin_loss(self.head, emb, labels)
        check_finite(loss, self.global_step, batch_idx)
        self.log("train.loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train.acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> Any:
        params = list(self.model.parameters()) + list(self.head.parameters())
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        elif self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {self.optimizer_name!r} (adamw or sgd)")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, int(self.warmup_epochs * total / max(1, self.trainer.max_epochs)))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if self.schedule == "poly":  # InsightFace's polynomial decay, power 2
                return (1 - progress) ** 2
            return 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
