"""EdgeFace teachers (George et al., IEEE T-BIOM 2024): timm's EdgeNeXt with LoRaLin layers.

EdgeNeXt backbone for 112x112 faces; its head (global average pooling -> LayerNorm ->
dropout -> linear) gives a 512-d embedding. In the ``gamma`` variants every linear layer
except those of modules named ``*head*`` (the head's final linear included, as it is the
``fc`` child of the head) is a LoRaLin: a rank-r projection without bias followed by the
output projection, r = max(2, floor(min(in, out) * gamma)).

The module layout follows the authors' released model code (``TimmFRWrapperV2``: the timm
model under ``model.``, ``LoRaLin.linear1`` / ``linear2``), so their released state dicts load
strictly: ``load_checkpoint_into(create_teacher("edgeface_xs_gamma_06"), "edgeface.pt")``.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from teachers.registry import register_teacher


class LoRaLin(nn.Module):
    """Low-rank linear layer: ``linear2(linear1(x))`` with ``linear1`` of rank ``rank``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.linear1 = nn.Linear(in_features, rank, bias=False)
        self.linear2 = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def lowrank_rank(in_features: int, out_features: int, gamma: float) -> int:
    """EdgeFace's rank rule: max(2, floor(min(in, out) * gamma))."""
    return max(2, int(min(in_features, out_features) * gamma))


def replace_linear_with_lowrank(module: nn.Module, gamma: float) -> nn.Module:
    """Swap every ``nn.Linear`` child not named ``*head*`` for a LoRaLin, recursively."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and "head" not in name:
            rank = lowrank_rank(child.in_features, child.out_features, gamma)
            setattr(
                module,
                name,
                LoRaLin(child.in_features, child.out_features, rank, child.bias is not None),
            )
        else:
            replace_linear_with_lowrank(child, gamma)
    return module


class EdgeFace(nn.Module):
    """timm EdgeNeXt ``backbone`` with a ``embedding_size`` head, LoRaLin layers if ``gamma``."""

    def __init__(
        self,
        backbone: str,
        gamma: float | None,
        embedding_size: int = 512,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = timm.create_model(
            backbone, pretrained=False, drop_rate=drop_rate, drop_path_rate=drop_path_rate
        )
        self.model.reset_classifier(embedding_size)
        if gamma is not None:
            replace_linear_with_lowrank(self.model, gamma)
        self.embedding_size = embedding_size
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@register_teacher("edgeface_xxs")
def edgeface_xxs(embedding_size: int = 512, drop_path_rate: float = 0.0) -> EdgeFace:
    """EdgeFace-XXS: EdgeNeXt-XX-Small, full-rank linears (1.24 M params, 94.7 MFLOPs)."""
    return EdgeFace("edgenext_xx_small", None, embedding_size, drop_path_rate=drop_path_rate)


@register_teacher("edgeface_xs_gamma_06")
def edgeface_xs_gamma_06(embedding_size: int = 512, drop_path_rate: float = 0.0) -> EdgeFace:
    """EdgeFace-XS(gamma=0.6): EdgeNeXt-X-Small with LoRaLin (1.77 M params, 154 MFLOPs)."""
    return EdgeFace("edgenext_x_small", 0.6, embedding_size, drop_path_rate=drop_path_rate)


@register_teacher("edgeface_s_gamma_05")
def edgeface_s_gamma_05(embedding_size: int = 512, drop_path_rate: float = 0.0) -> EdgeFace:
    """EdgeFace-S(gamma=0.5): EdgeNeXt-Small with LoRaLin (3.65 M params, 306 MFLOPs)."""
    return EdgeFace("edgenext_small", 0.5, embedding_size, drop_path_rate=drop_path_rate)


@register_teacher("edgeface_base")
def edgeface_base(embedding_size: int = 512, drop_path_rate: float = 0.0) -> EdgeFace:
    """EdgeFace-Base: EdgeNeXt-Base, full-rank linears (18.23 M params, 1398.8 MFLOPs)."""
    return EdgeFace("edgenext_base", None, embedding_size, drop_path_rate=drop_path_rate)
