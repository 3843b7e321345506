"""BinaryFaceNet: a MobileFaceNet-style 1-bit face network, reconstructed for 112x112 faces.

The seed paper describes BinaryFaceNet by its ingredients and its cost (Table 2: 184.9 M
1-bit MACs, 3.8 M 32-bit MACs, 506 K parameters) but publishes no layer table; this is a
reconstruction from that description, sized to those counts:

* a float 3x3 stride-2 stem (32 channels, 56 px);
* "grouped-convolution squeeze-and-excitation in the first layers": a binary 3x3 conv to 64
  channels, then a residual block with a *grouped* binary 3x3 conv followed by a float
  squeeze-and-excitation gate (56 px);
* quantized separable convolutions: float depthwise 3x3 (stride 2 to go down) + 1-bit
  pointwise 1x1, residual where the shape allows (28 px x128 x4, 14 px x256 x2, 7 px 512);
* PReLU after every BatchNorm, and DoReFa-style weights: sign(w) scaled by mean(|w|) of the
  tensor (``weight_scale="mean_abs"``), folded into the constant filter at export;
* MobileFaceNet's head (global depthwise conv, linear to a 128-d embedding: with 512-d the
  head alone would add 196 K parameters to Table 2's 506 K).

Variants. ``binaryfacenet`` keeps the original grouping (4 groups of 16 input channels) that
LCE cannot run as a binary conv: its converter needs a multiple of 32 input channels per group,
so that layer stays a float CONV_2D (export coverage < 1; export with
``export.allow_partial: true``). ``binaryfacenet_lce`` uses 2 groups of 32 channels: every
binary conv becomes ``LceBconv2d``, at the price of twice that layer's 1-bit MACs.

Activations are +-1 (LCE's binary activations), not DoReFa's {0, 1}. Depthwise layers are
float because LCE has no binary depthwise kernel; that is why the 32-bit MACs exceed Table 2.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from students.heads import EmbeddingHead
from students.layers import BinaryConv2d, SamePadConv2d
from students.registry import register_student


class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(W2 PReLU(W1 avgpool(x))) (float)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.PReLU(channels // reduction),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class GroupedSEBlock(nn.Module):
    """PReLU(x + SE(BN(GroupedBinaryConv3x3(x))))."""

    def __init__(self, channels: int, groups: int, binary: bool = True, **binary_args: Any) -> None:
        super().__init__()
        self.conv = BinaryConv2d(
            channels, channels, 3, groups=groups, binary=binary, lce_groups=False, **binary_args
        )
        self.bn = nn.BatchNorm2d(channels)
        self.se = SqueezeExcite(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.se(self.bn(self.conv(x))))


class SeparableBlock(nn.Module):
    """Float depthwise 3x3 (stride 1 or 2) + BN + PReLU, 1-bit pointwise + BN (+ x), PReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        binary: bool = True,
        **binary_args: Any,
    ) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            SamePadConv2d(in_channels, in_channels, 3, stride, groups=in_channels),
            nn.BatchNorm2d(in_channels),
            nn.PReLU(in_channels),
        )
        self.pointwise = BinaryConv2d(in_channels, out_channels, 1, binary=binary, **binary_args)
        self.bn = nn.BatchNorm2d(out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.pointwise(self.depthwise(x)))
        return self.act(x + y if self.residual else y)


class BinaryFaceNet(nn.Module):
    """BinaryFaceNet (see module docstring); ``binary=False`` gives the float twin."""

    def __init__(
        self,
        se_groups: int = 4,
        embedding_size: int = 128,
        binary: bool = True,
        dropout: float = 0.0,
        **binary_args: Any,
    ) -> None:
        super().__init__()
        binary_args.setdefault("weight_scale", "mean_abs")
        self.embedding_size = embedding_size
        self.stem = nn.Sequential(SamePadConv2d(3, 32, 3, 2), nn.BatchNorm2d(32), nn.PReLU(32))
        b = dict(binary=binary, **binary_args)
        self.se_stage = nn.Sequential(
            BinaryConv2d(32, 64, 3, **b),
            nn.BatchNorm2d(64),
            nn.PReLU(64),
            GroupedSEBlock(64, se_groups, **b),
        )
        self.separable = nn.Sequential(
            SeparableBlock(64, 128, 2, **b),  # 28 px
            *(SeparableBlock(128, 128, 1, **b) for _ in range(4)),
            SeparableBlock(128, 256, 2, **b),  # 14 px
            *(SeparableBlock(256, 256, 1, **b) for _ in range(2)),
            SeparableBlock(256, 512, 2, **b),  # 7 px
        )
        self.head = EmbeddingHead(512, 7, embedding_size, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.separable(self.se_stage(self.stem(x))))


@register_student("binaryfacenet")
def binaryfacenet(**kwargs: Any) -> BinaryFaceNet:
    """BinaryFaceNet as described (grouped binary conv of 16 channels per group: not LCE)."""
    return BinaryFaceNet(se_groups=4, **kwargs)


@register_student("binaryfacenet_lce")
def binaryfacenet_lce(**kwargs: Any) -> BinaryFaceNet:
    """BinaryFaceNet with 32 channels per group, so every binary conv runs on LCE."""
    return BinaryFaceNet(se_groups=2, **kwargs)
