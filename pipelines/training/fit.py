"""Lightning fitting shared by the training stages: loaders, checkpoints, resume, reporting."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from faces.callbacks import MetricsCallback, MetricSink, VerificationCallback
from faces.progress import on_terminal, progress_callbacks
from faces.streaming import EpochSampler, TrainingFaces
from pipelines.core.config import DistillTrainConfig, TrainConfig
from pipelines.training.data import DataContext
from pipelines.training.loading import (
    LoaderPosition,
    StepCheckpoint,
    checkpoint_on_sigterm,
    loader_errors,
    make_loader,
    resolve_workers,
    training_threads,
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, then renamed into place.

    A process killed while writing leaves the previous checkpoint intact, never a truncated
    one. Resuming loads with ``weights_only=True``: a checkpoint cannot run code.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class RNGStateCallback(pl.Callback):
    """Saves the Python, NumPy and torch random states in every checkpoint and restores them.

    The shuffling of the next epoch and the augmentations draw from these generators, so a run
    resumed from an epoch-end checkpoint continues exactly as if it had never stopped.
    """

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        name, key, *rest = state["numpy"]
        np.random.set_state((name, key.numpy(), *rest))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _precision(cfg: TrainConfig) -> str:
    from distill.acceleration import resolve_precision

    return resolve_precision(cfg.precision, distillation=isinstance(cfg, DistillTrainConfig))


def _schedule_callbacks(cfg: TrainConfig) -> list[pl.Callback]:
    """The multi-stage binarization of a distillation config (none for teachers)."""
    float_epochs = getattr(cfg, "float_epochs", 0)
    act_epochs = getattr(cfg, "binary_activation_epochs", 0)
    if not float_epochs and not act_epochs:
        return []
    from students.schedules import BinarizationSchedule

    return [BinarizationSchedule(float_epochs, act_epochs)]


def distributed_worker_rank() -> int:
    """Global rank of this process when Lightning (or torchrun / SLURM) started it as a worker
    of distributed data parallel training; 0 for the main process.

    Lightning's ``ddp`` strategy re-executes the command line (``facekd run ...``) once per
    extra device with ``LOCAL_RANK`` set; other nodes' processes carry ``NODE_RANK``.
    """
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return node * per_node + local


def available_cpus() -> int:
    """CPU cores this process may run on (respects ``taskset`` / cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def fit(
    module: pl.LightningModule,
    dataset: TrainingFaces,
    cfg: TrainConfig,
    data: DataContext,
    stage_dir: Path,
    sink: MetricSink,
    seed: int,
    sampler: EpochSampler | None = None,
) -> dict[str, float]:
    """Train ``module`` on ``dataset``; resumes from ``stage_dir/checkpoints/last.ckpt``.

    ``sampler`` replaces plain shuffling (e.g. a fixed share of labelled faces per batch).
    Batches are loaded by ``data.num_workers`` processes; ``last.ckpt`` is also written every
    ``cfg.checkpoint_every_steps`` steps and on SIGTERM, and a resumed run continues after
    the last checkpointed batch (:mod:`pipelines.training.loading`).

    Verification on the evaluation pairs runs every ``cfg.eval_every`` epochs and at the end;
    every epoch's metrics go to ``sink``. Returns the last verification metrics.
    """
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is not a PyTorch Lightning.*")
    pl.seed_everything(seed, workers=True, verbose=False)
    cpus = available_cpus()
    workers = resolve_workers(data.cfg.num_workers, cpus, dataset.in_memory)
    torch.set_num_threads(training_threads(cpus, workers))
    if len(dataset) < cfg.batch_size:
        raise ValueError(f"only {len(dataset)} training images for batch size {cfg.batch_size}")
    if sampler is None:
        sampler = EpochSampler(len(dataset), cfg.batch_size, seed)
    position: LoaderPosition | None = None
    if getattr(data.cfg, "loader", "torch") == "dali":  # reads, decodes (GPU) and shards
        loader: Any = data.dali_faces(cfg.batch_size)
    else:
        loader = make_loader(dataset, sampler, cfg.batch_size, workers)
        position = LoaderPosition(sampler)
    verification = VerificationCallback(
        data.eval_sets,
        every=cfg.eval_every,
        threshold=data.far_threshold,
        every_steps=cfg.eval_every_steps,
    )
    ckpt_dir = stage_dir / "checkpoints"
    if distributed_worker_rank() == 0:  # beside the checkpoints: kept on resume, not otherwise
        recorder = CurveRecorder(ckpt_dir / CURVE_FILE, cfg.batch_size, module)
        verification.on_result = _observed(recorder, stage_dir.name)
    for stale in ckpt_dir.glob(".*.tmp"):  # a write cut short by a killed process
        stale.unlink()
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        save_last=True,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
    )
    last = ckpt_dir / "last.ckpt"
    step_checkpoint = StepCheckpoint(last, cfg.checkpoint_every_steps)
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        accelerator="auto",
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=_precision(cfg),
        gradient_clip_val=cfg.grad_clip,
        logger=False,
        enable_model_summary=False,
        enable_progress_bar=on_terminal(),
        callbacks=[
            *progress_callbacks(stage_dir.name, max_minutes=cfg.max_minutes),
            *_schedule_callbacks(cfg),
            verification,
            MetricsCallback(sink, [verification]),
            RNGStateCallback(),
            *([position] if position else []),
            step_checkpoint,
            checkpoint,
        ],
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        default_root_dir=str(stage_dir),
        use_distributed_sampler=False,  # EpochSampler shards by rank itself
    )
    worker = distributed_worker_rank() > 0
    if last.exists():
        if not worker:
            print(f"resuming {stage_dir.name} from {last} ({_resume_point(last, sampler)})")
    elif not worker:  # the starting point, logged as step 0
        sink(verification.evaluate(module, 0), 0)
    with checkpoint_on_sigterm(step_checkpoint), loader_errors(dataset):
        trainer.fit(module, loader, ckpt_path=str(last) if last.exists() else None)
    if trainer.global_rank > 0:
        # a distributed worker's job ends with training: rank 0 saves, exports and logs
        sys.exit(0)
    if verification.last_epoch != trainer.current_epoch:  # stopped by max_time, or resumed
        sink(verification.evaluate(module, trainer.current_epoch), trainer.current_epoch)
    return verification.last


CURVE_FILE = "learning_curve.jsonl"

EvaluationObserver = Callable[[str, int, dict[str, float]], None]
_observers: list[EvaluationObserver] = []


@contextmanager
def observing_evaluations(observer: EvaluationObserver) -> Iterator[None]:
    """Call ``observer(stage, step, metrics)`` after every verification of a training stage
    in this process (e.g. a sweep reporting to its trial; an exception it raises, such as a
    pruned trial, ends the training)."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def _observed(recorder: CurveRecorder, stage: str) -> Callable[[int, dict[str, float]], None]:
    def on_result(step: int, metrics: dict[str, float]) -> None:
        recorder(step, metrics)
        for observer in list(_observers):
            observer(stage, step, metrics)

    return on_result


class CurveRecorder:
    """Appends each evaluation (steps, images seen, metrics) as a JSON line: the learning curve
    that :mod:`pipelines.evaluation.learning_curve` reads and draws."""

    def __init__(self, path: Path, batch_size: int, module: pl.LightningModule) -> None:
        self.path, self.batch_size, self.module = path, batch_size, module

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        try:
            world = int(self.module.trainer.world_size)
        except RuntimeError:  # not attached yet: the evaluation before training
            world = 1
        entry = {"step": step, "images_seen": step * self.batch_size * world, **metrics}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _resume_point(last: Path, sampler: EpochSampler) -> str:
    """Where a checkpoint resumes, in words: the epoch (1-based) and the global step."""
    state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    step = int(state.get("global_step", 0))
    position = next(
        (v for k, v in state.get("callbacks", {}).items() if "LoaderPosition" in k), None
    )
    per_epoch = max(1, len(sampler) // sampler.batch_size)
    if position and int(position.get("batches", per_epoch)) < per_epoch:
        epoch, batch = int(position["epoch"]) + 1, int(position["batches"])
        return f"epoch {epoch}, after batch {batch} of {per_epoch}, global step {step}"
    return f"after epoch {int(state['epoch']) + 1}, global step {step}"
