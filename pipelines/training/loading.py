"""The training loader: worker processes, thread budget, mid-epoch checkpoints and resume.

Decoding and augmentation run in ``data.num_workers`` worker processes (one thread each);
the training process keeps the other CPUs for its own threads, so together they use no
more threads than the CPUs the process may run on. A checkpoint is written every
``train.checkpoint_every_steps`` steps and when SIGTERM arrives (after the step in progress);
it records where the loader was, and a resumed run continues after the last checkpointed
batch of the epoch instead of at its start.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from faces.data import FaceDataError
from faces.streaming import EpochSampler, TrainingFaces, worker_init


def resolve_workers(setting: str | int, cpus: int, in_memory: bool = False) -> int:
    """Loader worker processes for ``data.num_workers`` on ``cpus`` usable CPUs.

    ``auto``: none when the images are already decoded in memory (augmenting a batch takes
    milliseconds; the training process keeps every CPU), else all CPUs but one, which the
    training process keeps (0 on one CPU). More workers than CPUs is refused: they would
    only take turns on the same cores.
    """
    if setting == "auto":
        return 0 if in_memory else max(0, cpus - 1)
    workers = int(setting)
    if workers > cpus:
        raise FaceDataError(
            f"data.num_workers = {workers} but this process may run on {cpus} CPU(s) "
            "(its affinity); use at most that, or auto"
        )
    return workers


def training_threads(cpus: int, workers: int) -> int:
    """Torch threads of the training process: the CPUs the workers leave (at least 1)."""
    return max(1, cpus - workers)


def make_loader(
    dataset: TrainingFaces, sampler: EpochSampler, batch_size: int, workers: int
) -> DataLoader:
    """Batches of ``dataset`` in ``sampler``'s order, prefetched by ``workers`` processes."""
    dataset.track_progress(workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        worker_init_fn=worker_init,
    )


class LoaderPosition(pl.Callback):
    """Saves the loader's place (epoch, batches done) in every checkpoint; restores it.

    Restored before Lightning first iterates the loader, so the first batches a resumed run
    draws are the ones after the last checkpointed step.
    """

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler
        self.trainer: pl.Trainer | None = None
        self.restored: dict[str, int] | None = None

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(self.trainer.current_epoch), "batches": int(progress.processed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        per_epoch = len(self.sampler) // self.sampler.batch_size
        if batches >= per_epoch:  # saved at the end of its epoch: the next one starts
            epoch, batches = epoch + 1, 0
        self.sampler.resume_at(epoch, batches)
        self.restored = {"epoch": epoch, "batches": batches}


class StopRequestedError(Exception):
    """SIGTERM arrived; the step in progress was finished and checkpointed."""


class StepCheckpoint(pl.Callback):
    """``last.ckpt`` every ``every`` optimiser steps, and after the step SIGTERM arrived in.

    On SIGTERM the run then stops (:class:`StopRequestedError`, which :func:`checkpoint_on_sigterm`
    turns into KeyboardInterrupt once Lightning has let go), resumable.
    """

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every
        self.stop_requested = False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        due = self.every and step % self.every == 0 and step > 0
        if due or self.stop_requested:
            trainer.save_checkpoint(self.path)
        if self.stop_requested:
            raise StopRequestedError


@contextlib.contextmanager
def checkpoint_on_sigterm(callback: StepCheckpoint) -> Iterator[None]:
    """While training: SIGTERM asks for a checkpoint after the current step, then a stop."""

    def handler(signum: int, frame: object) -> None:
        callback.stop_requested = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    except StopRequestedError:
        raise KeyboardInterrupt from None  # the CLI: "interrupted; run it again to resume"
    finally:
        signal.signal(signal.SIGTERM, previous)
    if callback.stop_requested:  # arrived after the last step: training is saved, stop now
        raise KeyboardInterrupt


@contextlib.contextmanager
def loader_errors(dataset: TrainingFaces) -> Iterator[None]:
    """A data error in a worker, or a dead worker, ends as a :class:`FaceDataError` that names
    the image (its path or record key), never as a hang or a wall of tracebacks."""
    try:
        yield
    except FaceDataError as exc:
        text = str(exc)
        if "Original Traceback" in text:  # re-raised from a worker: keep the message
            text = text.strip().splitlines()[-1].split("FaceDataError: ", 1)[-1]
            raise FaceDataError(text) from None
        raise
    except RuntimeError as exc:
        match = re.search(r"DataLoader worker \(pid\(?s?\)? ([\d, ]+)\) exited", str(exc))
        if not match:
            raise
        where = ""
        if dataset.progress is not None:
            reading = [int(i) for i in dataset.progress.tolist() if i >= 0]
            if reading:
                where = " while reading " + " or ".join(dataset.source.key(i) for i in reading)
        raise FaceDataError(
            f"a data loader worker (pid {match.group(1).strip()}) died{where}: {exc}; "
            "if it ran out of memory, lower data.num_workers"
        ) from None
