"""Tests for distill.losses and distill.module (EmbeddingDistiller with a frozen teacher)."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill.losses import (
    DISTILL_LOSSES,
    CosineEmbeddingLoss,
    NormalisedL2Loss,
    WeightedLoss,
)
from distill.module import EmbeddingDistiller
from faces.callbacks import NonFiniteLossError
from faces.transforms import normalise
from students import create_student

EMB = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(seed: int = 0, n: int = 6, dim: int = EMB) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)


# ---- losses --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CosineEmbeddingLoss, NormalisedL2Loss])
def test_loss_zero_for_identical_and_positive_otherwise(cls) -> None:
    loss = cls()
    a, b = _pair()
    assert float(loss(a, a.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(a, 2.5 * a)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(a, b)) > 0.1
    assert float(loss(a, -a)) > float(loss(a, b))  # opposite is the worst case


@pytest.mark.parametrize("cls", [CosineEmbeddingLoss, NormalisedL2Loss])
def test_loss_scale_invariant(cls) -> None:
    loss = cls()
    a, b = _pair(1)
    ref = loss(a, b)
    torch.testing.assert_close(loss(3.0 * a, b), ref)
    torch.testing.assert_close(loss(a, 0.01 * b), ref)
    # per-row scales too: every row is normalised on its own
    scales = torch.tensor([0.1, 1.0, 5.0, 2.0, 0.5, 9.0])[:, None]
    torch.testing.assert_close(loss(a * scales, b), ref)


def test_loss_values() -> None:
    a, b = _pair(2)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    torch.testing.assert_close(CosineEmbeddingLoss()(a, b), (1 - cos).mean())
    # |u - v|^2 = 2 - 2 cos for unit vectors
    torch.testing.assert_close(NormalisedL2Loss()(a, b), (2 - 2 * cos).mean())
    assert float(CosineEmbeddingLoss()(a, -a)) == pytest.approx(2.0)


def test_losses_give_gradients_to_the_student_only() -> None:
    a, b = _pair(3)
    a.requires_grad_(True)
    CosineEmbeddingLoss()(a, b).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is None


def test_loss_registry() -> None:
    assert {"cosine", "l2", "rkd_distance", "rkd_angle", "similarity_preserving", "logit"} <= set(
        DISTILL_LOSSES.names()
    )
    assert {"margin_distillation", "arcface", "cosface"} <= set(DISTILL_LOSSES.names())
    assert isinstance(DISTILL_LOSSES.create("l2"), NormalisedL2Loss)


def test_weighted_loss_combines() -> None:
    a, b = _pair(4)
    total, parts = WeightedLoss({"cosine": 0.5, "l2": 2.0})(a, b)
    assert set(parts) == {"cosine", "l2"}
    torch.testing.assert_close(parts["cosine"], CosineEmbeddingLoss()(a, b))
    torch.testing.assert_close(parts["l2"], NormalisedL2Loss()(a, b))
    torch.testing.assert_close(total, 0.5 * parts["cosine"] + 2.0 * parts["l2"])
    single, parts1 = WeightedLoss({"cosine": 3.0})(a, b)
    assert list(parts1) == ["cosine"]
    torch.testing.assert_close(single, 3.0 * parts["cosine"])


def test_weighted_loss_rejects_empty_and_unknown() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WeightedLoss({})
    with pytest.raises(KeyError, match="known: .*cosine, .*l2"):
        WeightedLoss({"kl": 1.0})


# ---- EmbeddingDistiller --------------------------------------------------------------------


class TinyTeacher(nn.Module):
    """(N, 3, 112, 112) -> (N, 16): BatchNorm (to watch its buffers), pool, linear."""

    def __init__(self, nan_after: int | None = None) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(3 * 4 * 4, EMB)
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.fc(self.pool(self.bn(x)).flatten(1))
        if self.nan_after is not None and self.calls > self.nan_after:
            out = out * float("nan")
        return out


def _images(n: int, seed: int) -> torch.Tensor:
    """Smooth random uint8 faces (upsampled 8x8 noise): the teacher's pooled features vary."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g) * 255
    return nn.functional.interpolate(low, size=112, mode="bilinear").round().to(torch.uint8)


def _teacher(seed: int = 0, **kwargs) -> TinyTeacher:
    torch.manual_seed(seed)
    t = TinyTeacher(**kwargs)
    with torch.no_grad():  # non-trivial BatchNorm state, so a change would be visible
        t.bn.running_mean.copy_(torch.tensor([120.0, 130.0, 125.0]) / 128 - 127.5 / 128)
        t.bn.running_var.copy_(torch.tensor([0.3, 0.4, 0.5]))
    return t


def _student() -> nn.Module:
    torch.manual_seed(0)
    return create_student("birealface", width=32, depths=[1, 1, 1], embedding_size=EMB)


def _trainer(max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
    )


def _loader(images: torch.Tensor, batch_size: int) -> DataLoader:
    labels = torch.arange(len(images)) % 4
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)


def _distill_loss(module: EmbeddingDistiller, images: torch.Tensor) -> float:
    x = normalise(images)
    was = module.model.training
    module.model.train()  # batch statistics: the same BatchNorm mode as training
    with torch.no_grad():
        total, _ = module.loss(module.model(x), module.teacher(x))
    module.model.train(was)
    return float(total)


def test_teacher_frozen_on_construction() -> None:
    teacher = _teacher()
    module = EmbeddingDistiller(_student(), teacher, {"cosine": 1.0})
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(p.requires_grad for p in module.model.parameters())
    module.train()
    assert module.model.training and not module.teacher.training


def test_distillation_lowers_loss_and_keeps_teacher_fixed() -> None:
    images = _images(16, seed=0)
    teacher = _teacher()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _student()
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    module = EmbeddingDistiller(student, teacher, {"cosine": 1.0, "l2": 0.5}, lr=5e-3)
    torch.manual_seed(0)
    before = _distill_loss(module, images)

    trainer = _trainer(max_steps=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers / small-dataset hints
        trainer.fit(module, _loader(images, batch_size=8))
    assert trainer.global_step == 15

    after = _distill_loss(module, images)
    assert after < 0.7 * before, (before, after)

    # the teacher did not move: parameters and BatchNorm buffers bit-identical, still frozen
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_state[name]), name
    assert teacher.bn.num_batches_tracked.item() == 0
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    # the student did
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert changed
    # only the student is optimised, and the LR decays linearly to zero over the run
    opt = trainer.optimizers[0]
    opt_params = {id(p) for group in opt.param_groups for p in group["params"]}
    assert opt_params == {id(p) for p in student.parameters()}
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert "train.loss" in trainer.callback_metrics
    assert "train.loss_cosine" in trainer.callback_metrics
    assert "train.loss_l2" in trainer.callback_metrics


def test_unlabelled_batches_are_accepted() -> None:
    images = _images(4, seed=1)
    module = EmbeddingDistiller(_student(), _teacher(), {"cosine": 1.0})
    trainer = _trainer(max_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(images, batch_size=2))  # bare image tensors
    assert trainer.global_step == 2


def test_nan_teacher_raises_with_step_and_batch() -> None:
    images = _images(8, seed=2)
    teacher = _teacher(nan_after=5)  # 6th training step: global step 5, 2nd batch of epoch 3
    module = EmbeddingDistiller(_student(), teacher, {"cosine": 1.0})
    trainer = _trainer(max_steps=20)
    with warnings.catch_warnings(), pytest.raises(NonFiniteLossError) as info:
        warnings.simplefilter("ignore")
        trainer.fit(module, _loader(images, batch_size=4))
    msg = str(info.value)
    assert "nan" in msg.lower()
    assert "global step 5" in msg
    assert "(batch 1)" in msg
    assert teacher.calls == 6


def test_cached_teacher_embeddings_drive_training_without_running_the_teacher():
    """With cached targets the teacher is never called and the student still learns."""
    from distill.module import teacher_embeddings

    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 112, 112), dtype=torch.uint8)
    teacher = _teacher().eval()
    cached = teacher_embeddings(teacher, images, batch_size=8)
    assert cached.shape == (16, 2, EMB)
    with torch.no_grad():
        x = normalise(images[:4])
        torch.testing.assert_close(cached[:4, 0], teacher(x))
        torch.testing.assert_close(cached[:4, 1], teacher(x.flip(-1)))

    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    student = create_student("birealface", width=32, depths=[1, 1, 1], embedding_size=EMB)
    module = EmbeddingDistiller(student, teacher, {"cosine": 1.0}, lr=5e-3, cached=cached)
    loader = DataLoader(TensorDataset(images, torch.arange(16)), batch_size=8, shuffle=True)
    trainer = pl.Trainer(
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    assert calls == []
    assert torch.isfinite(trainer.callback_metrics["train.loss"])
