"""Inverting gradients (Geiping et al., NeurIPS 2020), written for facekd.

The attacker sees the gradient of the model's training loss on a private batch, knows the
model, the loss and its targets (teacher embeddings or labels), and optimises a dummy batch so
that its gradient points the same way: the matching loss is one minus the cosine between the
two gradients (all parameters concatenated), plus a total-variation prior on the images. Adam
on the images (optionally on the sign of their gradient, as the paper does), step decay at
3/8, 5/8 and 7/8 of the iterations, the images kept in the pixel box.

The model is used in the mode it is given (eval in the usual threat model: no BatchNorm batch
statistics); images are float (N, 3, H, W) in the normalised range. A model with sign
activations must have a straight-through estimator that can be differentiated twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from privacy.inversion import IMAGE_LIMIT

__all__ = [
    "TrainingLoss",
    "GradientAttack",
    "GradientInversionResult",
    "parameters_of",
    "observed_gradient",
    "gradient_matching_loss",
    "total_variation",
    "invert_gradients",
]

TrainingLoss = Callable[[torch.Tensor], torch.Tensor]
"""Maps the model's outputs on a batch to the scalar training loss (targets held inside)."""


@dataclass(frozen=True)
class GradientAttack:
    """The fixed budget and recipe of one attack."""

    iterations: int = 4000
    lr: float = 0.1
    tv_weight: float = 1e-4
    signed: bool = True
    seed: int = 0
    box: float = IMAGE_LIMIT


@dataclass
class GradientInversionResult:
    """Recovered images (normalised range), the final matching loss and the wall time."""

    images: torch.Tensor
    loss: float
    seconds: float


def parameters_of(model: nn.Module) -> list[nn.Parameter]:
    """The parameters whose gradients are shared: those that require a gradient."""
    return [p for p in model.parameters() if p.requires_grad]


def observed_gradient(
    model: nn.Module, loss_fn: TrainingLoss, images: torch.Tensor
) -> list[torch.Tensor]:
    """The gradient a training step on ``images`` would share (one tensor per parameter)."""
    params = parameters_of(model)
    grads = torch.autograd.grad(loss_fn(model(images)), params)
    return [g.detach() for g in grads]


def gradient_matching_loss(
    grads: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]
) -> torch.Tensor:
    """One minus the cosine of two gradients, every parameter's entries concatenated."""
    dot = sum((g * o).sum() for g, o in zip(grads, observed, strict=True))
    g_norm = sum(g.pow(2).sum() for g in grads).sqrt()
    o_norm = sum(o.pow(2).sum() for o in observed).sqrt()
    return 1 - dot / (g_norm * o_norm).clamp_min(1e-12)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def invert_gradients(
    model: nn.Module,
    loss_fn: TrainingLoss,
    observed: Sequence[torch.Tensor],
    shape: Sequence[int],
    attack: GradientAttack,
) -> GradientInversionResult:
    """Recover a batch of ``shape`` whose gradient under ``loss_fn`` matches ``observed``."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(attack.seed)
    dummy = (torch.randn(*shape, generator=gen) * 0.5).clamp(-attack.box, attack.box)
    dummy.requires_grad_(True)
    params = parameters_of(model)
    opt = torch.optim.Adam([dummy], lr=attack.lr)
    n = attack.iterations
    milestones = [int(n * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(loss_fn(model(dummy)), params, create_graph=True)
        total = gradient_matching_loss(grads, observed)
        total = total + attack.tv_weight * total_variation(dummy)
        (dummy.grad,) = torch.autograd.grad(total, [dummy])
        if attack.signed:
            dummy.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            dummy.clamp_(-attack.box, attack.box)
    final = gradient_matching_loss(torch.autograd.grad(loss_fn(model(dummy)), params), observed)
    return GradientInversionResult(
        dummy.detach().clone(), float(final), time.perf_counter() - start
    )
