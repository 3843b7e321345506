"""BiRealFace: a BinaryFaceNet-like residual binary student for 112x112 faces.

Full-precision stem (3x3 stride-2 conv, depthwise stride-2 conv, 1x1 conv: 112 -> 28 px,
as QuickNet's stem), three stages of Bi-Real-style residual blocks
(``x + BN(BinaryConv3x3(x))`` then PReLU: 1-bit weights and 1-bit activations, full-precision
shortcut), full-precision transitions (2x2 max-pool + 1x1 conv) and a full-precision
global-depthwise embedding head as in MobileFaceNet. Every binary convolution is LCE-fusable
(see ``students.layers``).

ReActNet options (default off, so existing checkpoints load unchanged): ``rsign`` learns a
threshold per channel before each binary conv's sign, ``rprelu`` makes each block's PReLU an
RPReLU (the stem keeps its PReLUs).
"""

from __future__ import annotations

import torch
from torch import nn

from students.heads import EmbeddingHead
from students.layers import BinaryConv2d, SamePadConv2d, check_rsign, prelu
from students.registry import register_student


class BinaryResidualBlock(nn.Module):
    """x + BN(BinaryConv3x3(x)), then PReLU."""

    def __init__(
        self,
        channels: int,
        pad_value: float = 1.0,
        binary: bool = True,
        rsign: bool = False,
        rprelu: bool = False,
    ) -> None:
        super().__init__()
        self.conv = BinaryConv2d(
            channels, channels, 3, pad_value=pad_value, binary=binary, rsign=rsign
        )
        self.bn = nn.BatchNorm2d(channels)
        self.act = prelu(channels, rprelu, init=0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn(self.conv(x)))


class Transition(nn.Sequential):
    """Full-precision downsampling: 2x2 max-pool, 1x1 conv, BN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.MaxPool2d(2),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class BiRealFace(nn.Module):
    """Residual binary face embedding network (see module docstring)."""

    def __init__(
        self,
        width: int = 64,
        depths: tuple[int, ...] = (2, 2, 2),
        embedding_size: int = 128,
        pad_value: float = 1.0,
        binary: bool = True,
        dropout: float = 0.0,
        rsign: bool = False,
        rprelu: bool = False,
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.stem = nn.Sequential(
            SamePadConv2d(3, 32, 3, 2),
            nn.BatchNorm2d(32),
            nn.PReLU(32),  # 56x56
            SamePadConv2d(32, 32, 3, 2, groups=32),
            nn.BatchNorm2d(32),  # 28x28, depthwise
            nn.Conv2d(32, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
        )
        stages: list[nn.Module] = []
        channels = width
        for i, depth in enumerate(depths):
            if i > 0:
                stages.append(Transition(channels, channels * 2))
                channels *= 2
            stages.extend(
                BinaryResidualBlock(channels, pad_value, binary, rsign, rprelu)
                for _ in range(depth)
            )
        self.stages = nn.Sequential(*stages)
        size = 28 // 2 ** (len(depths) - 1)
        self.head = EmbeddingHead(channels, size, embedding_size, dropout)
        check_rsign(self, rsign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@register_student("birealface")
def birealface(
    width: int = 64,
    depths: tuple[int, ...] | list[int] = (2, 2, 2),
    embedding_size: int = 128,
    pad_value: float = 1.0,
    binary: bool = True,
    dropout: float = 0.0,
    rsign: bool = False,
    rprelu: bool = False,
) -> BiRealFace:
    """BiRealFace with ``width`` channels after the stem, doubling at each of the stages;
    ``rsign`` / ``rprelu``: ReActNet's RSign and RPReLU (``rsign`` needs a binary block: it is
    refused with ``depths`` all 0)."""
    return BiRealFace(
        width, tuple(depths), embedding_size, pad_value, binary, dropout, rsign, rprelu
    )
