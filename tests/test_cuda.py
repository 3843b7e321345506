"""Training on a GPU: teacher and distillation steps under 16-mixed precision, evaluation of a
model that lives on the GPU, the teacher pass of distillation. Skipped without CUDA (CI has
none); run on a GPU box with ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.losses import LossContext
from distill.module import Distiller, teacher_embeddings
from faces.evaluate import torch_embed_fn
from faces.transforms import augment, normalise
from students import create_student
from teachers import create_teacher
from teachers.train import MarginTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

N, CLASSES, EMB = 32, 4, 128


def _faces() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 112, 112), dtype=torch.uint8, generator=g)
    return images, torch.arange(N) % CLASSES


def _fit(module: pl.LightningModule, dataset: TensorDataset, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="gpu",
        devices=1,
        precision="16-mixed",  # what the pipeline picks on a GPU (pipelines.training.fit)
        gradient_clip_val=5.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(dataset, batch_size=8, shuffle=True, drop_last=True))
    return trainer


def _changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return any(not torch.equal(before[k].cpu(), after[k].cpu()) for k in before)


def test_augment_keeps_the_batch_on_its_device() -> None:
    images, _ = _faces()
    cpu = augment(images, torch.Generator().manual_seed(1))
    gpu = augment(images.cuda(), torch.Generator().manual_seed(1))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    # same draws; float rounding of the jitter may move a pixel by one level
    assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1


def test_teacher_trains_with_a_margin_head_in_mixed_precision() -> None:
    images, labels = _faces()
    model = create_teacher("vit_face_micro", embedding_size=EMB)
    module = MarginTrainer(model, EMB, CLASSES, {"name": "arcface", "s": 32.0, "m": 0.3})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _fit(module, TensorDataset(images, labels), steps=6)
    assert trainer.global_step == 6
    assert torch.isfinite(trainer.callback_metrics["train.loss"])
    assert _changed(model, before)
    emb = torch_embed_fn(model)(np.random.default_rng(0).standard_normal((2, 3, 112, 112), "f"))
    assert emb.shape == (2, EMB) and np.isfinite(emb).all()


LOSSES = {
    "cosine": {"cosine": 1.0},
    "margins": {
        "cosine": 1.0,
        "margin_distillation": {"weight": 1.0, "s": 32.0},
        "logit": {"weight": 1.0, "T": 4.0},
        "seed": {"weight": 1.0},
        "arcface": {"weight": 1.0, "s": 32.0, "m": 0.3},
    },
}


@pytest.mark.parametrize(
    ("student", "losses"),
    [("birealface", "cosine"), ("quicknet_small", "cosine"), ("birealface", "margins")],
)
def test_binary_student_distils_in_mixed_precision(student: str, losses: str) -> None:
    images, labels = _faces()
    teacher = create_teacher("vit_face_micro", embedding_size=EMB).eval()
    cached = teacher_embeddings(teacher, images, batch_size=16)
    assert cached.device.type == "cpu" and cached.shape == (N, 2, EMB)
    assert next(teacher.parameters()).device.type == "cpu"  # returned where it was
    with torch.no_grad():
        ref = teacher(normalise(images[:4]))
    np.testing.assert_allclose(cached[:4, 0].numpy(), ref.numpy(), atol=2e-3, rtol=2e-3)

    model = create_student(student, embedding_size=EMB)
    g = torch.Generator().manual_seed(0)
    context = LossContext(
        EMB,
        CLASSES,
        centres=torch.randn(CLASSES, EMB, generator=g),
        spread=torch.rand(CLASSES, generator=g),
        bank=cached,
    )
    module = Distiller(model, teacher, LOSSES[losses], lr=3e-3, cached=cached, context=context)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = TensorDataset(images, torch.arange(N), labels)
    trainer = _fit(module, dataset, steps=6)
    assert trainer.global_step == 6
    assert torch.isfinite(trainer.callback_metrics["train.loss"])
    assert _changed(model, before)
    model.cuda()  # evaluation of a model mid-training, on the GPU
    x = np.random.default_rng(0).standard_normal((2, 3, 112, 112), "f")
    emb = torch_embed_fn(model)(x)
    assert isinstance(emb, np.ndarray) and emb.shape == (2, EMB) and np.isfinite(emb).all()
