"""Distributed data parallel distillation on CPU: two gloo processes equal one big batch.

Two ranks (Lightning ``ddp_spawn``, gloo backend) train the Distiller for a few steps on
batches of B; one process trains the same module on batches of 2B holding exactly the images
of both ranks' batches (Lightning gives each rank a shuffling DistributedSampler, seed 0;
the single process reads the same samplers' batches side by side). Equivalence holds
because (1) every loss used is a mean of per-image terms (cosine, l2, ArcFace cross-entropy
with a fixed margin, MarginDistillation with per-class margins), so the mean of the ranks'
gradients (DDP's all-reduce) is the gradient over the union; (2) the test student has no
BatchNorm (batch statistics would differ between B and 2B images; the real students would
need SyncBatchNorm for this equality); (3) augmentation is off (each rank draws its own
random flips and shifts). Rank 0 broadcasts its initial weights, so both start alike.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from distill.losses import LossContext
from distill.module import Distiller

pytestmark = pytest.mark.slow  # two processes: about 25 s

EMB, CLASSES, B, STEPS = 8, 4, 4, 3
LOSSES = {
    "cosine": 1.0,
    "l2": 0.5,
    "arcface": {"weight": 0.3, "s": 8.0, "m": 0.2},
    "margin_distillation": {"weight": 0.5, "s": 8.0, "per": "class"},
}


class SaveWeights(pl.Callback):
    """Each rank writes the student's and the heads' weights at the end."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save(state, Path(self.folder) / f"rank{trainer.global_rank}.pt")


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 16), nn.PReLU(), nn.Linear(16, EMB)
    )


def _module(data: dict[str, torch.Tensor]) -> Distiller:
    g = torch.Generator().manual_seed(3)
    context = LossContext(
        EMB,
        CLASSES,
        centres=torch.randn(CLASSES, EMB, generator=g),
        spread=torch.rand(CLASSES, generator=g),
    )
    torch.manual_seed(1)  # the ArcFace head's initial centres
    return Distiller(
        _student(), None, LOSSES, lr=1e-2, cached=data["cached"], context=context, augment=False
    )


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = 2 * B * STEPS
    return {
        "images": torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
        "labels": torch.randint(0, CLASSES, (n,), generator=g),
        "cached": torch.randn(n, 2, EMB, generator=g),
    }


def _union_of_rank_batches(dataset: TensorDataset) -> list[int]:
    """The order in which one process sees, per batch of 2B, both ranks' batches of B."""
    ranks = [
        list(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=0))
        for r in range(2)
    ]
    order: list[int] = []
    for start in range(0, len(ranks[0]), B):
        order += ranks[0][start : start + B] + ranks[1][start : start + B]
    return order


def _trainer(devices: int, folder: Path) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[SaveWeights(str(folder))],
    )


def test_two_ddp_ranks_equal_one_process_on_the_combined_batches(tmp_path: Path) -> None:
    data = _data()
    dataset = TensorDataset(data["images"], torch.arange(len(data["images"])), data["labels"])
    warnings.filterwarnings("ignore")

    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    _trainer(2, ddp_dir).fit(_module(data), DataLoader(dataset, batch_size=B, shuffle=False))
    single_loader = DataLoader(dataset, batch_size=2 * B, sampler=_union_of_rank_batches(dataset))
    _trainer(1, single_dir).fit(_module(data), single_loader)

    rank0 = torch.load(ddp_dir / "rank0.pt", weights_only=True)
    rank1 = torch.load(ddp_dir / "rank1.pt", weights_only=True)
    single = torch.load(single_dir / "rank0.pt", weights_only=True)
    initial = _module(data).state_dict()
    assert set(rank0) == set(single)
    assert any("head" in k for k in rank0)  # the ArcFace head is trained and synchronised
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ in {key}"
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    moved = [k for k in single if not torch.equal(single[k], initial[k])]
    assert any(k.startswith("model.") for k in moved) and any("head" in k for k in moved)
