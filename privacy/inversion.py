"""Template inversion: a decoder trained to turn a model's templates back into faces.

The attacker knows the model (queries it) and holds faces of people other than the attacked
ones. A decoder is trained on those faces, with a pixel loss between each face and the
decoder's image of its template (plus, optionally, an identity loss: the cosine between the
model's template of the reconstruction and the original template), under a fixed budget; it
then reconstructs the attacked people from their templates alone.

Images are float (N, 3, H, W) in the project's normalised range ``(pixel - 127.5) / 128``, or
uint8 pixels (normalised batch by batch, so a large attacker set stays small in memory).
Templates are the model's raw output on one image (no flip), optionally L2-normalised, or its
1-bit sign template (``sign``: +-1 per dimension, scaled to unit length).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from faces.transforms import PIXEL_MEAN, PIXEL_SCALE, normalise

__all__ = [
    "IMAGE_LIMIT",
    "Decoder",
    "LinearDecoder",
    "InversionBudget",
    "InversionResult",
    "outputs_of",
    "templates_of",
    "train_decoder",
    "template_inversion",
]

IMAGE_LIMIT = PIXEL_MEAN / PIXEL_SCALE  # |normalised pixel| <= 127.5 / 128


class Decoder(nn.Module):
    """Embedding -> image: a linear map to a (width, s, s) grid, then ``n_up`` blocks of
    transposed convolution (x2) + BatchNorm + ReLU, a 3x3 convolution and a tanh scaled to the
    normalised pixel range. ``image_size`` must be ``s * 2 ** n_up`` (112 = 7 * 16)."""

    def __init__(self, dim: int, image_size: int = 112, n_up: int = 4, width: int = 64) -> None:
        super().__init__()
        if image_size % 2**n_up:
            raise ValueError(f"image_size {image_size} is not divisible by 2**{n_up}")
        self.base = image_size // 2**n_up
        channels = [width * 2 ** min(n_up - 1 - i, 2) for i in range(n_up)] + [width // 2]
        self.width = channels[0]
        self.project = nn.Sequential(
            nn.Linear(dim, channels[0] * self.base**2),
            nn.BatchNorm1d(channels[0] * self.base**2),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.up = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels[-1], 3, 3, padding=1)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = self.project(emb).view(len(emb), self.width, self.base, self.base)
        return torch.tanh(self.out(self.up(x))) * IMAGE_LIMIT


class LinearDecoder(nn.Module):
    """Embedding -> image by one linear map and the scaled tanh: the decoder that inverts an
    invertible linear model exactly (the sanity check of the attack)."""

    def __init__(self, dim: int, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.linear = nn.Linear(dim, 3 * image_size**2)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        x = self.linear(emb).view(len(emb), 3, self.image_size, self.image_size)
        return torch.tanh(x) * IMAGE_LIMIT


@dataclass(frozen=True)
class InversionBudget:
    """The fixed budget of one template-inversion attack (the same for every model)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    identity_weight: float = 0.0
    normalize: bool = True
    sign: bool = False  # attack 1-bit templates (sign of the embedding) instead


@dataclass
class InversionResult:
    """Reconstructions (normalised range), the decoder, the last training loss and the wall
    time of training and of reconstructing."""

    reconstructions: torch.Tensor
    decoder: nn.Module
    final_loss: float
    train_seconds: float
    attack_seconds: float


@contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with no parameter gradients; both restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


def _template(out: torch.Tensor, normalize: bool, sign: bool = False) -> torch.Tensor:
    if sign:  # +-1 scaled to unit length: the 1-bit template as a decoder input
        return torch.where(out >= 0, 1.0, -1.0) / out.shape[1] ** 0.5
    return F.normalize(out, dim=1) if normalize else out


def _as_input(images: torch.Tensor) -> torch.Tensor:
    """A batch in the normalised range (uint8 pixels are normalised)."""
    return normalise(images) if images.dtype == torch.uint8 else images


def outputs_of(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The model's raw outputs on images (normalised or uint8), in eval mode without
    gradients: computed once, they serve float and sign templates alike."""
    with _frozen(model), torch.no_grad():
        rows = [
            model(_as_input(images[i : i + batch_size])) for i in range(0, len(images), batch_size)
        ]
    return torch.cat(rows)


def templates_of(
    model: nn.Module,
    images: torch.Tensor,
    normalize: bool = True,
    batch_size: int = 64,
    sign: bool = False,
) -> torch.Tensor:
    """The model's templates of images (normalised or uint8), in eval mode without gradients."""
    return _template(outputs_of(model, images, batch_size), normalize, sign)


def train_decoder(
    model: nn.Module,
    decoder: nn.Module,
    images: torch.Tensor,
    budget: InversionBudget,
    outputs: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Train ``decoder`` (in place) on the attacker's faces; returns the last loss and the
    wall time. Mini-batches are drawn with the budget's seed. ``outputs``: the model's raw
    outputs on ``images`` if already computed (:func:`outputs_of`)."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(budget.seed)
    if outputs is None:
        outputs = outputs_of(model, images)
    templates = _template(outputs, budget.normalize, budget.sign)
    opt = torch.optim.Adam(decoder.parameters(), lr=budget.lr)
    decoder.train()
    loss = torch.zeros(())
    with _frozen(model):
        for _ in range(budget.steps):
            idx = torch.randint(
                0, len(images), (min(budget.batch_size, len(images)),), generator=gen
            )
            recon = decoder(templates[idx])
            loss = F.mse_loss(recon, _as_input(images[idx]))
            if budget.identity_weight > 0:
                again = _template(model(recon), True)
                cos = (again * F.normalize(templates[idx], dim=1)).sum(1)
                loss = loss + budget.identity_weight * (1 - cos).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    decoder.eval()
    return float(loss.detach()), time.perf_counter() - start


def template_inversion(
    model: nn.Module,
    decoder: nn.Module,
    attacker_images: torch.Tensor,
    target_images: torch.Tensor,
    budget: InversionBudget,
    attacker_outputs: torch.Tensor | None = None,
    target_outputs: torch.Tensor | None = None,
) -> InversionResult:
    """Train the decoder on ``attacker_images`` (people disjoint from the targets), then
    reconstruct ``target_images`` from their templates only. The model's raw outputs on
    either set may be passed in when already computed (:func:`outputs_of`)."""
    final_loss, train_seconds = train_decoder(
        model, decoder, attacker_images, budget, attacker_outputs
    )
    start = time.perf_counter()
    if target_outputs is None:
        target_outputs = outputs_of(model, target_images)
    templates = _template(target_outputs, budget.normalize, budget.sign)
    with torch.no_grad():
        recon = decoder(templates)
    return InversionResult(recon, decoder, final_loss, train_seconds, time.perf_counter() - start)
