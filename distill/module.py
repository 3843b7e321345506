"""Distillation of a frozen teacher into a (binarized) student, or training it alone."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from distill.acceleration import CompiledForward
from distill.features import feature_losses
from distill.losses import LossContext, WeightedLoss
from faces.callbacks import check_finite
from faces.transforms import augment, normalise


@torch.no_grad()
def teacher_embeddings(
    teacher: nn.Module,
    images: torch.Tensor,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The teacher's embeddings of every image and of its mirror image: (N, 2, D), on the CPU.

    Computed once per dataset so that training pays only for the student; the student then
    sees shifted, colour-jittered versions of the same (possibly mirrored) image. The teacher
    runs on ``device`` (default: the GPU when there is one) and is returned to where it was.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    home = next(teacher.parameters()).device
    teacher.eval().to(device)
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = normalise(images[start : start + batch_size]).to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            pair = torch.stack([teacher(x), teacher(x.flip(-1))], dim=1)
            out.append(pair.float().cpu())
    finally:
        teacher.to(home)
    return torch.cat(out)


def class_centres(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    head_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's class centres and each class's spread around its centre.

    ``embeddings``: teacher embeddings of the labelled images, (N, D) or (N, V, D) with views
    (image and mirror) that all count. Centres: the rows of ``head_weight`` (a trained margin
    head's centres) when given, else the normalised mean of each class's normalised
    embeddings. Spread: the mean cosine of a class's embeddings to its centre, (C,); a class
    without images gets centre 0 and spread 0.
    """
    e = F.normalize(embeddings.float(), dim=-1)
    if e.dim() == 3:
        views = e.shape[1]
        e = e.reshape(-1, e.shape[-1])
        labels = labels.repeat_interleave(views)
    labels = labels.long()
    sums = torch.zeros(num_classes, e.shape[1]).index_add_(0, labels, e)
    counts = torch.bincount(labels, minlength=num_classes).float()
    if head_weight is not None:
        if tuple(head_weight.shape) != (num_classes, e.shape[1]):
            raise ValueError(
                f"teacher head of shape {tuple(head_weight.shape)} for {num_classes} classes "
                f"of {e.shape[1]}-d embeddings"
            )
        centres = F.normalize(head_weight.detach().float(), dim=1)
    else:
        centres = F.normalize(sums, dim=1)
    cos_sum = torch.zeros(num_classes).index_add_(0, labels, (e * centres[labels]).sum(1))
    spread = cos_sum / counts.clamp_min(1)
    return centres, spread


def class_centres_of_map(
    targets: Any,
    labels: torch.Tensor,
    num_classes: int,
    head_weight: torch.Tensor | None = None,
    chunk: int = 32768,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`class_centres` of the first ``len(labels)`` rows of a target map, read in
    chunks: memory holds the centres, never all embeddings (MS1M: 10 GB of them)."""
    n, dim = len(labels), targets.dim
    labels = labels.long()

    def chunks() -> Any:
        for start in range(0, n, chunk):
            e = F.normalize(targets.rows(start, min(n, start + chunk)), dim=-1)
            views = e.shape[1]
            yield e.reshape(-1, dim), labels[start : start + chunk].repeat_interleave(views)

    sums = torch.zeros(num_classes, dim)
    counts = torch.zeros(num_classes)
    for e, lab in chunks():
        sums.index_add_(0, lab, e)
        counts += torch.bincount(lab, minlength=num_classes).float()
    if head_weight is not None:
        if tuple(head_weight.shape) != (num_classes, dim):
            raise ValueError(
                f"teacher head of shape {tuple(head_weight.shape)} for {num_classes} classes "
                f"of {dim}-d embeddings"
            )
        centres = F.normalize(head_weight.detach().float(), dim=1)
    else:
        centres = F.normalize(sums, dim=1)
    cos_sum = torch.zeros(num_classes)
    for e, lab in chunks():
        cos_sum.index_add_(0, lab, (e * centres[lab]).sum(1))
    return centres, cos_sum / counts.clamp_min(1)


class Distiller(pl.LightningModule):
    """A student learns from a frozen teacher, from labels, or both, by weighted losses.

    Batches are ``images``, ``(images, indices)`` or ``(images, indices, labels)``; a label
    of -1 marks an unlabelled image, which only the label-free losses see (see
    ``distill.losses.WeightedLoss``). The teacher is frozen (eval mode, no gradients); with
    ``cached`` teacher embeddings (see ``teacher_embeddings``) the indices select the
    targets and only the student runs. Without a loss that uses the teacher, ``teacher`` may
    be None: the student trains alone (the no-teacher baseline). Losses with class heads get
    ``context`` (class count, the teacher's centres). The student and the losses' trainable
    heads are optimised by ``students.schedules.bnn_optimizer``: by default Adam with linear
    decay to zero, the usual setting for binary networks (Bi-Real Net, QuickNet).
    ``augment=False`` trains on the images as they are (no flips, shifts or jitter).
    ``cached`` is anything indexed as ``cached[indices, mirrored]`` -> (B, D): a tensor
    (N, 2, D) or a :class:`distill.targets.TargetMap` on disk. Batches from
    :class:`faces.streaming.TrainingFaces` come augmented by the loader workers, or with
    ``batch_augment`` are augmented here as one batch on the model's device (a GPU).
    ``channels_last`` and ``compile_student`` speed up the training step
    (:mod:`distill.acceleration`); they change no result beyond floating-point rounding.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        losses: dict[str, Any],
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        cached: torch.Tensor | None = None,
        context: LossContext | None = None,
        optimizer: str = "adam",
        schedule: str = "linear",
        warmup_epochs: float = 0.0,
        momentum: float = 0.9,
        augment: bool = True,
        batch_augment: bool = False,
        channels_last: bool = False,
        compile_student: bool = False,
    ) -> None:
        super().__init__()
        self.model = student
        self.loss = WeightedLoss(losses, context)
        if self.loss.uses_teacher and teacher is None and cached is None:
            raise ValueError(f"the losses {sorted(losses)} need a teacher")
        self.teacher = teacher.eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.features = feature_losses(self.loss)
        if self.features and self.teacher is None:
            raise ValueError("feature distillation (fitnet, attention_transfer) needs the teacher")
        for loss in self.features:  # checks the layer names, builds adapters, hooks the maps
            loss.attach(self.model, self.teacher)
        self.lr, self.weight_decay = lr, weight_decay
        self.optimizer_name, self.schedule = optimizer, schedule
        self.warmup_epochs, self.momentum = warmup_epochs, momentum
        self.cached = cached
        self.augment, self.batch_augment = augment, batch_augment
        # channels-last convolutions are faster on CPUs (oneDNN) and GPUs alike; the student
        # goes back to the default layout when training ends (checkpoints load either way)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # a plain attribute, not a submodule: state dicts and export see the student alone
        object.__setattr__(
            self, "_student_step", CompiledForward(self.model) if compile_student else self.model
        )

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, index, labels, mirror = self._inputs(batch)
        target = None
        if self.loss.uses_teacher:
            if self.features or self.cached is None:  # the hooks keep the teacher's maps
                with torch.no_grad():
                    target = self.teacher(x)
            if self.cached is not None:
                target = self.cached[index.cpu(), mirror.cpu().long()].to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self._student_step(x)
        with torch.autocast(emb.device.type, enabled=False):  # losses in float32 under AMP
            teacher_emb = None if target is None else target.float()
            total, parts = self.loss(emb.float(), teacher_emb, labels)
        check_finite(total, self.global_step, batch_idx)
        self.log("train.loss", total, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        for name, value in parts.items():
            self.log(f"train.loss_{name}", value, on_step=False, on_epoch=True, sync_dist=True)
        return total

    def on_train_end(self) -> None:
        for loss in self.features:  # the trained student leaves without hooks
            loss.release()
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)

    def _inputs(
        self, batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Normalised inputs on the device, dataset indices, labels and mirror flags.

        A 4-tuple comes from :class:`faces.streaming.TrainingFaces`: images already mirrored
        (the flags say which) and, unless ``batch_augment``, augmented in the loader workers.
        Plain ``images`` / ``(images, indices[, labels])`` batches are augmented here.
        """
        if isinstance(batch, (tuple, list)) and len(batch) == 4:
            images, index, labels, mirror = batch
            if self.batch_augment:
                images = augment(images.to(self.device), flip=False)
            x = normalise(images).to(self.device)
            return x, index, labels.to(self.device), mirror.bool()
        if isinstance(batch, (tuple, list)):
            images = batch[0]
            index = batch[1] if len(batch) > 1 else None
            labels = batch[2] if len(batch) > 2 else None
        else:
            images, index, labels = batch, None, None
        if labels is None:
            labels = torch.full((len(images),), -1, dtype=torch.long)
        labels = labels.to(self.device)
        if not self.augment:
            mirror = torch.zeros(len(images), dtype=torch.bool)
            return normalise(images).to(self.device), index, labels, mirror
        # the cache holds the teacher's view of each image and of its mirror
        mirror = torch.rand(len(images)) < 0.5
        flip = mirror.to(images.device)[:, None, None, None]
        images = torch.where(flip, images.flip(-1), images)
        return normalise(augment(images, flip=False)).to(self.device), index, labels, mirror

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's parameters and those of the losses' heads (never the teacher's)."""
        params = list(self.model.parameters())
        params += [p for p in self.loss.parameters() if p.requires_grad]
        return params

    def configure_optimizers(self) -> Any:
        from students.schedules import bnn_optimizer

        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_epochs * total / max(1, self.trainer.max_epochs or 1))
        return bnn_optimizer(
            self.trainable_parameters(),
            total,
            self.lr,
            self.optimizer_name,
            self.schedule,
            self.weight_decay,
            warmup,
            self.momentum,
        )


EmbeddingDistiller = Distiller
"""The former name (embedding losses only), kept for existing code."""
