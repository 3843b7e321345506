"""Faults inside ``pipelines.training.fit.fit``: NaN loss, a checkpoint write cut short."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from faces.callbacks import NonFiniteLossError, check_finite
from faces.streaming import TensorSource, TrainingFaces
from faces.verification_sets import VerificationSet
from pipelines.core.config import TrainConfig
from pipelines.training.fit import AtomicCheckpointIO, RNGStateCallback, fit


class _Regressor(pl.LightningModule):
    """A tiny embedding model whose loss turns NaN at global step ``nan_at``."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 112 * 112, 8))
        self.nan_at = nan_at

    def training_step(self, batch, batch_idx):
        images = batch[0]
        loss = self.model(images.float() / 255).pow(2).mean()
        if self.global_step == self.nan_at:
            loss = loss * float("nan")
        check_finite(loss, self.global_step, batch_idx)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _data(n: int = 16) -> tuple[TrainingFaces, SimpleNamespace]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8, generator=g)
    pairs = np.array([[0, 1, 1], [2, 3, 0], [4, 5, 1], [6, 7, 0]] * 5, dtype=np.int64)
    probe = VerificationSet("probe", images[:8], pairs)
    context = SimpleNamespace(
        eval_sets=[probe], far_threshold=None, cfg=SimpleNamespace(num_workers="auto")
    )
    return TrainingFaces(TensorSource(images), np.zeros(n, dtype=np.int64)), context


def test_nan_loss_stops_with_step_and_batch_and_keeps_last_good_checkpoint(tmp_path: Path):
    dataset, context = _data()
    cfg = TrainConfig(epochs=5, batch_size=4, eval_every=10, grad_clip=None)
    module = _Regressor(nan_at=9)  # 4 steps per epoch: the 2nd batch of the 3rd epoch
    with pytest.raises(NonFiniteLossError, match=r"global step 9 \(batch 1\)"):
        fit(module, dataset, cfg, context, tmp_path, lambda m, s: None, seed=0)
    last = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 8  # two good epochs kept
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path: Path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class Payload:
    """Any class: a weights-only load must refuse to build it."""


def test_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    torch.save({"epoch": 0, "evil": Payload()}, tmp_path / "bad.ckpt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "bad.ckpt")


def test_rng_state_round_trip() -> None:
    callback = RNGStateCallback()
    torch.manual_seed(1)
    np.random.seed(1)
    state = callback.state_dict()
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(99)
    np.random.seed(99)
    callback.load_state_dict(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
