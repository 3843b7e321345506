"""QuickNet and QuickNet-small (Bannink et al. 2021, larq-zoo) for 112x112 faces.

Follows larq-zoo's design: a full-precision stem (3x3 stride-2 conv to C/4 channels, ReLU,
3x3 stride-2 depthwise conv, 1x1 conv to C), four sections of residual blocks
``x + BN(ReLU(BinaryConv3x3(x)))`` (1-bit weights and activations, one-padding, full-precision
shortcut) and full-precision transition blocks between sections (ReLU, 2x2 max-pool with
stride 1, a fixed anti-aliasing blur as 3x3 stride-2 depthwise conv, 1x1 conv, BN). At 112 px
the sections run at 28, 14, 7 and 3 px (the stride-1 max-pool trims a pixel), which is what
the seed paper's Table 2 counts. The ImageNet classifier is replaced by a face embedding head
(ReLU, then MobileFaceNet's global depthwise conv + linear, float).

ReActNet options (default off): ``rsign`` learns a threshold per channel before each binary
conv's sign (also in the attention projections), ``rprelu`` replaces each block's ReLU by an
RPReLU (slope 0.25 at start; transitions and head keep their ReLU).

Difference to the original: latent weights are clipped at ``weight_clip`` (larq-zoo: 1.25) but
the activation's straight-through window is |x| <= 1 (larq-zoo: 1.25), because Brevitas ties the
activation clamp to the output scale, which must stay 1 for LCE's fusion.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from students.heads import EmbeddingHead
from students.layers import BinaryConv2d, RPReLU, SamePadConv2d, check_rsign
from students.registry import register_student


class QuickNetBlock(nn.Module):
    """x + BN(ReLU(BinaryConv3x3(x))); RPReLU instead of ReLU when ``rprelu``."""

    def __init__(
        self, channels: int, binary: bool = True, rprelu: bool = False, **binary_args: Any
    ) -> None:
        super().__init__()
        self.conv = BinaryConv2d(channels, channels, 3, pad_value=1.0, binary=binary, **binary_args)
        self.act: nn.Module = RPReLU(channels) if rprelu else nn.ReLU()
        self.bn = nn.BatchNorm2d(channels, momentum=0.1, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.act(self.conv(x)))


class BlurPool(SamePadConv2d):
    """A fixed (not trained) 3x3 [1 2 1] x [1 2 1] / 16 blur with stride 2 (anti-aliasing)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, 2, groups=channels)
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(k, k) / 16
        conv = self[1]
        with torch.no_grad():
            conv.weight.copy_(kernel.expand_as(conv.weight))
        conv.weight.requires_grad_(False)


class QuickNetTransition(nn.Sequential):
    """ReLU, 2x2 max-pool (stride 1), blur-pool (stride 2), 1x1 conv, BN (all float)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.MaxPool2d(2, stride=1),
            BlurPool(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class QuickNet(nn.Module):
    """QuickNet for faces (see module docstring); ``binary=False`` gives the float twin."""

    def __init__(
        self,
        section_filters: tuple[int, ...] = (64, 128, 256, 512),
        section_blocks: tuple[int, ...] = (4, 4, 4, 4),
        embedding_size: int = 512,
        binary: bool = True,
        dropout: float = 0.0,
        attention: tuple[int, ...] = (),
        rsign: bool = False,
        rprelu: bool = False,
        **binary_args: Any,
    ) -> None:
        super().__init__()
        binary_args["rsign"] = rsign
        if len(section_filters) != len(section_blocks):
            raise ValueError("section_filters and section_blocks need the same length")
        c0 = section_filters[0]
        if c0 % 4:
            raise ValueError(f"the first section needs a multiple of 4 channels, got {c0}")
        self.embedding_size = embedding_size
        self.stem = nn.Sequential(
            SamePadConv2d(3, c0 // 4, 3, 2),
            nn.BatchNorm2d(c0 // 4),
            nn.ReLU(),
            SamePadConv2d(c0 // 4, c0 // 4, 3, 2, groups=c0 // 4),
            nn.BatchNorm2d(c0 // 4, affine=False),
            nn.Conv2d(c0 // 4, c0, 1, bias=False),
            nn.BatchNorm2d(c0),
        )
        layers: list[nn.Module] = []
        channels, size = c0, 28
        for i, (filters, blocks) in enumerate(zip(section_filters, section_blocks, strict=True)):
            if filters != channels:
                layers.append(QuickNetTransition(channels, filters))
                channels, size = filters, -(-(size - 1) // 2)
            layers.extend(
                QuickNetBlock(channels, binary, rprelu, **binary_args) for _ in range(blocks)
            )
            if i in attention:
                from students.attention import BinaryAdditiveAttention

                layers.append(BinaryAdditiveAttention(channels, binary=binary, **binary_args))
        self.sections = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReLU(), EmbeddingHead(channels, size, embedding_size, dropout))
        check_rsign(self, rsign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.sections(self.stem(x)))


@register_student("quicknet")
def quicknet(embedding_size: int = 512, binary: bool = True, **kwargs: Any) -> QuickNet:
    """QuickNet: sections of 64, 128, 256, 512 channels, 4 blocks each (larq-zoo)."""
    kwargs.setdefault("weight_clip", 1.25)
    return QuickNet((64, 128, 256, 512), (4, 4, 4, 4), embedding_size, binary, **kwargs)


@register_student("quicknet_small")
def quicknet_small(embedding_size: int = 512, binary: bool = True, **kwargs: Any) -> QuickNet:
    """QuickNet-small: sections of 32, 64, 256, 512 channels, 4 blocks each (larq-zoo)."""
    kwargs.setdefault("weight_clip", 1.25)
    return QuickNet((32, 64, 256, 512), (4, 4, 4, 4), embedding_size, binary, **kwargs)


@register_student("quicknet_small_attn")
def quicknet_small_attn(embedding_size: int = 512, binary: bool = True, **kwargs: Any) -> QuickNet:
    """QuickNet-small with a binary additive-attention block after sections 3 and 4."""
    kwargs.setdefault("weight_clip", 1.25)
    kwargs.setdefault("attention", (2, 3))
    return QuickNet((32, 64, 256, 512), (4, 4, 4, 4), embedding_size, binary, **kwargs)
