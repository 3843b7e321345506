"""BinaryDenseNet 28/37/45 (Bethge et al. 2019, larq-zoo) for 112x112 faces.

Dense blocks without bottlenecks: every layer is ``BN -> BinaryConv3x3(growth 64)``
(1-bit weights and activations, zero padding) whose output is concatenated to its input.
Transitions are full precision: BN, 2x2 max-pool (stride 2), ReLU, 1x1 conv reducing the
channels by the published factor (rounded to a multiple of 32). The stem is larq-zoo's
ImageNet stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool). At 112 px the blocks run at
28, 14, 7 and 3 px, exactly the 1-bit and 32-bit MAC counts of the seed paper's Table 2. The
classifier is replaced by a float face embedding head (BN, ReLU, GDC, linear).

Difference to the original: the activation's straight-through window is |x| <= 1 (larq-zoo:
1.3; Brevitas ties the clamp to the output scale, which must stay 1 for LCE's fusion); latent
weights are clipped at 1.3 as in larq-zoo.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from students.heads import EmbeddingHead
from students.layers import BinaryConv2d, SamePadConv2d
from students.registry import register_student


class DenseLayer(nn.Module):
    """concat(x, BinaryConv3x3(BN(x)))."""

    def __init__(
        self, in_channels: int, growth: int, binary: bool = True, **binary_args: Any
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels, momentum=0.1, eps=1e-5)
        self.conv = BinaryConv2d(
            in_channels, growth, 3, pad_value=0.0, binary=binary, **binary_args
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bn(x))], dim=1)


def reduced_channels(channels: int, reduction: float) -> int:
    """larq-zoo's transition width: channels / reduction, rounded to a multiple of 32."""
    return round(channels // reduction / 32) * 32


class DenseTransition(nn.Sequential):
    """BN, 2x2 max-pool (stride 2), ReLU, 1x1 conv (float)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class BinaryDenseNet(nn.Module):
    """BinaryDenseNet for faces (see module docstring); ``binary=False``: the float twin."""

    def __init__(
        self,
        layers: tuple[int, ...],
        reduction: tuple[float, ...],
        initial_filters: int = 64,
        growth_rate: int = 64,
        embedding_size: int = 512,
        binary: bool = True,
        dropout: float = 0.0,
        **binary_args: Any,
    ) -> None:
        super().__init__()
        if len(reduction) != len(layers) - 1:
            raise ValueError(f"{len(layers)} dense blocks need {len(layers) - 1} reductions")
        self.embedding_size = embedding_size
        self.stem = nn.Sequential(
            SamePadConv2d(3, initial_filters, 7, 2),
            nn.BatchNorm2d(initial_filters),
            nn.ReLU(),
            nn.ZeroPad2d((0, 1, 0, 1)),  # TF's SAME for a 3x3 stride-2 pool on 56 px
            nn.MaxPool2d(3, stride=2),
        )
        blocks: list[nn.Module] = []
        channels, size = initial_filters, 28
        for i, n in enumerate(layers):
            for _ in range(n):
                blocks.append(DenseLayer(channels, growth_rate, binary, **binary_args))
                channels += growth_rate
            if i < len(layers) - 1:
                out = reduced_channels(channels, reduction[i])
                blocks.append(DenseTransition(channels, out))
                channels, size = out, size // 2
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            EmbeddingHead(channels, size, embedding_size, dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _densenet(
    layers: tuple[int, ...], reduction: tuple[float, ...], **kwargs: Any
) -> BinaryDenseNet:
    kwargs.setdefault("weight_clip", 1.3)
    return BinaryDenseNet(layers, reduction, **kwargs)


@register_student("binarydensenet28")
def binarydensenet28(**kwargs: Any) -> BinaryDenseNet:
    """BinaryDenseNet28: dense blocks of 6, 6, 6, 5 layers, reductions 2.7, 2.7, 2.2."""
    return _densenet((6, 6, 6, 5), (2.7, 2.7, 2.2), **kwargs)


@register_student("binarydensenet37")
def binarydensenet37(**kwargs: Any) -> BinaryDenseNet:
    """BinaryDenseNet37: dense blocks of 6, 8, 12, 6 layers, reductions 3.3, 3.3, 4."""
    return _densenet((6, 8, 12, 6), (3.3, 3.3, 4.0), **kwargs)


@register_student("binarydensenet45")
def binarydensenet45(**kwargs: Any) -> BinaryDenseNet:
    """BinaryDenseNet45: dense blocks of 6, 12, 14, 8 layers, reductions 2.7, 3.3, 4."""
    return _densenet((6, 12, 14, 8), (2.7, 3.3, 4.0), **kwargs)
