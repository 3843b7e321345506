"""Lightning callbacks shared by the training stages: verification and metric reporting."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from faces.evaluate import FarThreshold, evaluate_sets, torch_embed_fn
from faces.verification_sets import VerificationSet

MetricSink = Callable[[dict[str, float], int], None]
"""Receives (metrics, step); the pipeline layer sends them to its tracker."""


class VerificationCallback(pl.Callback):
    """Evaluates the model on verification sets at the end of every ``every`` epochs.

    Every set is scored (``verify.<set>.*``) plus ``verify.mean.acc``; images that the sets
    share are embedded once (:func:`faces.evaluate.evaluate_sets`)."""

    def __init__(
        self,
        sets: Sequence[VerificationSet],
        every: int = 1,
        model_attr: str = "model",
        threshold: FarThreshold | None = None,
        every_steps: int | None = None,
    ) -> None:
        if not sets:
            raise ValueError("VerificationCallback needs at least one verification set")
        self.sets, self.threshold = list(sets), threshold
        self.every, self.model_attr = every, model_attr
        self.every_steps = every_steps
        self._scored: tuple[int, dict[str, float]] | None = None  # (step, metrics) last scored
        self.last: dict[str, float] = {}
        self.last_epoch = -1
        # receives (optimiser steps so far, metrics) after every evaluation: a learning curve
        self.on_result: Callable[[int, dict[str, float]], None] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        self.evaluate(module, epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any
    ) -> None:
        step = int(trainer.global_step)
        if not self.every_steps or step % self.every_steps:
            return
        if 0 < trainer.max_steps <= step:
            return  # the end of training is evaluated anyway
        self._score(module)  # a point of the learning curve, not an epoch's result

    def evaluate(self, module: pl.LightningModule, epoch: int) -> dict[str, float]:
        """Verification metrics of the module's model now; remembered as the last result."""
        step = int(module.global_step)
        if self._scored is not None and self._scored[0] == step:
            self.last = self._scored[1]  # this step's batch end scored it already
        else:
            self.last = self._score(module)
        self.last_epoch = epoch
        return self.last

    def _score(self, module: pl.LightningModule) -> dict[str, float]:
        model = getattr(module, self.model_attr)
        was_training = model.training
        metrics = evaluate_sets(torch_embed_fn(model), self.sets, self.threshold)
        model.train(was_training)
        self._scored = (int(module.global_step), metrics)
        if self.on_result is not None:
            self.on_result(int(module.global_step), metrics)
        return metrics


class MetricsCallback(pl.Callback):
    """Sends the epoch's logged metrics (and verification results) to a sink, step = epoch.

    Place it after the VerificationCallback instances whose results it reports.
    """

    def __init__(
        self, sink: MetricSink, verification: list[VerificationCallback] | None = None
    ) -> None:
        self.sink = sink
        self.verification = verification or []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if torch.is_tensor(v) and v.numel() == 1 and math.isfinite(float(v))
        }
        for cb in self.verification:
            if cb.last_epoch == trainer.current_epoch + 1:
                metrics.update(cb.last)
        metrics["epoch"] = trainer.current_epoch + 1
        self.sink(metrics, trainer.current_epoch + 1)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf."""


def check_finite(loss: torch.Tensor, step: int, batch_idx: int) -> None:
    """Stop training with the step and batch where the loss stopped being finite."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"loss is {loss.item()} at global step {step} (batch {batch_idx}); "
            "training stopped, the last good checkpoint is kept"
        )
