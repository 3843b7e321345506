"""Training progress as plain lines, for output that is not a terminal (CI, nohup, a scheduler).

On a terminal Lightning's progress bar shows each step; anywhere else :class:`ProgressLines`
prints at most one line every ``FACEKD_PROGRESS_SECONDS`` (default 30) per training stage,
whatever the epoch length, and the stage's last line when it ends:

    [distill] epoch 3/15, step 36/180: 412 images/s, loss 0.4123, ETA 1 min 12 s
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

ENV = "FACEKD_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


class ProgressSettingError(ValueError):
    """``FACEKD_PROGRESS_SECONDS`` is not a number of seconds > 0."""


def every_seconds() -> float:
    """Seconds between progress lines of a stage: ``$FACEKD_PROGRESS_SECONDS`` or 30."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ProgressSettingError(f"{ENV} must be a number of seconds > 0, got {text!r}")
    return value


def on_terminal() -> bool:
    """Whether standard output is a terminal (Lightning's progress bar writes there)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 12 s``, ``2 h 05 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _batch_size(batch: Any) -> int:
    """Images in a batch: the first dimension of its first tensor."""
    first = batch
    while isinstance(first, list | tuple) and first:
        first = first[0]
    if isinstance(first, dict) and first:
        first = next(iter(first.values()))
    return int(first.shape[0]) if torch.is_tensor(first) and first.ndim else 0


def _loss(outputs: Any) -> float | None:
    value = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if torch.is_tensor(value) and value.numel() == 1:
        loss = float(value.detach())
        return loss if math.isfinite(loss) else None
    return None


class ProgressLines(pl.Callback):
    """At most one line every ``every_seconds`` (at a step's or an epoch's end, whichever comes
    first after the interval) and a last line when training ends: epoch, step, images/s and mean
    loss since the previous line, ETA (to the last epoch, or to ``max_minutes`` if sooner).

    ``write`` receives each line (default: ``print``); only the global-rank-0 process writes.
    """

    def __init__(
        self,
        name: str,
        every_seconds: float = DEFAULT_SECONDS,
        max_minutes: float | None = None,
        write: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds}")
        self.name, self.every_s = name, every_seconds
        self.max_s = max_minutes * 60 if max_minutes else None
        self.write, self.clock = write, clock
        self._fit_start = self._last_line = 0.0
        self._batches_at_start = 0
        self._done_steps = 0  # batches done when the stage was last seen, for the last line
        self._images = 0  # since the previous line, as the loss
        self._loss_sum, self._loss_count = 0.0, 0
        self._unreported = False

    def _done(self, trainer: pl.Trainer, batch_idx: int) -> int:
        per_epoch = trainer.num_training_batches
        if not math.isfinite(per_epoch):
            return trainer.global_step
        return trainer.current_epoch * int(per_epoch) + batch_idx + 1

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._fit_start = self._last_line = self.clock()
        per_epoch = trainer.num_training_batches
        start = trainer.current_epoch * per_epoch if math.isfinite(per_epoch) else 0
        self._batches_at_start = self._done_steps = int(start)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += _batch_size(batch) * max(1, trainer.world_size)
        loss = _loss(outputs)
        if loss is not None:
            self._loss_sum += loss
            self._loss_count += 1
        self._done_steps = self._done(trainer, batch_idx)
        self._unreported = True
        if self.clock() - self._last_line >= self.every_s:
            self._line(trainer, self._done_steps)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        per_epoch = trainer.num_training_batches
        if math.isfinite(per_epoch):
            self._done_steps = (trainer.current_epoch + 1) * int(per_epoch)
            if trainer.max_steps > 0:  # a budget of steps ends the epoch early
                self._done_steps = min(self._done_steps, trainer.max_steps)
        if self._unreported and self.clock() - self._last_line >= self.every_s:
            self._line(trainer, self._done_steps)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._unreported:  # the stage's last line, however soon after the previous one
            self._line(trainer, self._done_steps)

    def _line(self, trainer: pl.Trainer, done: int) -> None:
        now = self.clock()
        rate = self._images / max(now - self._last_line, 1e-9)
        loss = f"loss {self._loss_sum / self._loss_count:.4f}" if self._loss_count else "loss -"
        self._last_line = now
        self._images, self._loss_sum, self._loss_count = 0, 0.0, 0
        self._unreported = False
        if not trainer.is_global_zero:
            return
        per_epoch = trainer.num_training_batches
        total = trainer.max_epochs * int(per_epoch) if math.isfinite(per_epoch) else None
        if trainer.max_steps > 0:  # distill.train.max_steps: the budget, whichever ends first
            total = min(total, trainer.max_steps) if total else trainer.max_steps
        epochs = trainer.max_epochs
        if total and math.isfinite(per_epoch) and per_epoch:
            epochs = min(epochs, math.ceil(total / int(per_epoch)))
        step = f"step {done}/{total}" if total else f"step {done}"
        epoch = min(trainer.current_epoch + 1, epochs)
        if total and math.isfinite(per_epoch) and per_epoch:
            epoch = min(max(1, math.ceil(done / int(per_epoch))), epochs)
        self.write(
            f"[{self.name}] epoch {epoch}/{epochs}, {step}: "
            f"{rate:.0f} images/s, {loss}, ETA {self._eta(now, done, total)}"
        )

    def _eta(self, now: float, done: int, total: int | None) -> str:
        elapsed = now - self._fit_start
        left = []
        since_start = done - self._batches_at_start
        if total is not None and since_start > 0:
            left.append((total - done) * elapsed / since_start)
        if self.max_s is not None:
            left.append(self.max_s - elapsed)
        return format_duration(min(left)) if left else "?"


def progress_callbacks(name: str, max_minutes: float | None = None) -> list[pl.Callback]:
    """:class:`ProgressLines` (every :func:`every_seconds`) when standard output is not a
    terminal; none on a terminal, where Lightning's progress bar runs."""
    return [] if on_terminal() else [ProgressLines(name, every_seconds(), max_minutes)]
