"""Embedding-level distillation of a frozen teacher into a (binarized) student."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from distill.losses import WeightedLoss
from faces.callbacks import check_finite
from faces.transforms import augment, normalise


@torch.no_grad()
def teacher_embeddings(
    teacher: nn.Module, images: torch.Tensor, batch_size: int = 128
) -> torch.Tensor:
    """The teacher's embeddings of every image and of its mirror image: (N, 2, D).

    Computed once per dataset so that training pays only for the student; the student then
    sees shifted, colour-jittered versions of the same (possibly mirrored) image.
    """
    teacher.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalise(images[start : start + batch_size])
        x = x.contiguous(memory_format=torch.channels_last)
        out.append(torch.stack([teacher(x), teacher(x.flip(-1))], dim=1).float())
    return torch.cat(out)


def cached_teacher_embeddings(
    teacher: nn.Module, images: torch.Tensor, cache: Path, teacher_key: str
) -> torch.Tensor:
    """:func:`teacher_embeddings`, kept in the file ``cache`` for the same teacher and images.

    ``teacher_key`` identifies the teacher's weights (e.g. its artifact's sha256); the images
    are hashed. A resumed or repeated distillation skips the teacher pass entirely.
    """
    h = hashlib.sha256(teacher_key.encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    key = h.hexdigest()
    if cache.is_file():
        try:
            stored = torch.load(cache, map_location="cpu", weights_only=True)
            if stored.get("key") == key:
                return stored["embeddings"]
        except Exception:  # noqa: BLE001 - an unreadable cache is recomputed
            pass
    embeddings = teacher_embeddings(teacher, images)
    tmp = cache.with_name(cache.name + ".tmp")
    torch.save({"key": key, "embeddings": embeddings}, tmp)
    os.replace(tmp, cache)
    return embeddings


class EmbeddingDistiller(pl.LightningModule):
    """Student learns the teacher's embeddings of the same augmented batch.

    The teacher is frozen (eval mode, no gradients). Batches are ``(images, indices)`` (or
    ``(images, labels)``); labels are not used, so unlabelled faces are as useful as labelled
    ones. With ``cached`` teacher embeddings (see ``teacher_embeddings``), indices select the
    targets and only the student runs. Adam with linear decay to zero, the usual setting for
    binary networks (Bi-Real Net, QuickNet).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        losses: dict[str, float],
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        cached: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = student
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.loss = WeightedLoss(losses)
        self.lr, self.weight_decay = lr, weight_decay
        self.cached = cached

    def train(self, mode: bool = True) -> EmbeddingDistiller:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.cached is not None:
            index = batch[1]
            mirror = torch.rand(len(images)) < 0.5
            images = torch.where(mirror[:, None, None, None], images.flip(-1), images)
            x = normalise(augment(images, flip=False)).to(self.device)
            target = self.cached[index.cpu(), mirror.long()].to(self.device)
        else:
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
