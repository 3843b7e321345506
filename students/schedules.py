"""Training schedules of the BNN literature, selectable in the pipeline YAML.

* multi-stage binarization (Real-to-Binary, Martinez et al. 2020; Bi-Real Net's two steps):
  full precision for ``float_epochs``, then binary activations with float weights for
  ``binary_activation_epochs``, then 1-bit weights and activations (:class:`BinarizationSchedule`);
* optimisers and learning-rate schedules suited to BNNs: Adam with linear decay to zero
  (Bi-Real Net, QuickNet; the default), cosine, constant, optional linear warm-up
  (:func:`bnn_optimizer`).

Latent-weight clipping and the straight-through estimator are properties of the binary layers
(``weight_clip``, ``ste`` in ``students.layers``), passed as student arguments.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch

from students.layers import set_binarization


def binarization_at(
    epoch: int, float_epochs: int = 0, binary_activation_epochs: int = 0
) -> tuple[bool, bool]:
    """(binary activations, binary weights) during ``epoch`` of a multi-stage schedule."""
    activations = epoch >= float_epochs
    weights = epoch >= float_epochs + binary_activation_epochs
    return activations, weights


class BinarizationSchedule(pl.Callback):
    """Switches the students' binarizers at each epoch start; both on when training ends.

    The switch depends only on the epoch number, so a resumed run is in the right stage.
    """

    def __init__(self, float_epochs: int = 0, binary_activation_epochs: int = 0) -> None:
        self.float_epochs = float_epochs
        self.binary_activation_epochs = binary_activation_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        act, weights = binarization_at(
            trainer.current_epoch, self.float_epochs, self.binary_activation_epochs
        )
        set_binarization(pl_module, act, weights)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        set_binarization(pl_module, True, True)


def lr_factor(step: int, total: int, schedule: str, warmup: int = 0) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total`` optimiser steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (linear, cosine, constant)")


def bnn_optimizer(
    params: Iterable[torch.nn.Parameter],
    total_steps: int,
    lr: float,
    optimizer: str = "adam",
    schedule: str = "linear",
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    momentum: float = 0.9,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: the optimiser and a per-step schedule.

    Adam without weight decay on the latent weights is the usual BNN choice (weight decay
    pulls latent weights to 0, where their sign flips back and forth).
    """
    params = list(params)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r} (adam, adamw, sgd)")
    total = max(1, total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total, schedule, warmup_steps)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
