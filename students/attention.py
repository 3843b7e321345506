"""Binary efficient additive attention (SwiftFormer-style), usable inside any student.

SwiftFormer's additive attention (Shaker et al. 2023) replaces the N x N token matrix by a
learned global query: queries Q and keys K are projections of the tokens; each token's
attention weight is ``Q_i . w_g / sqrt(d)``, L2-normalised over the tokens; the global query
``g = sum_i a_i Q_i`` multiplies every key element-wise; a projection of ``g * K`` plus Q
gives the output, followed by a final projection. No value matrix, cost linear in the
number of tokens.

Here the four projections are 1x1 ``BinaryConv2d`` (sign of the input, 1-bit weights, BN
after), which LCE fuses into ``LceBconv2d``; the token weighting, normalisations and products
stay float (they are O(N d), not O(N d^2)). The block is residual: ``x + BN(attention(x))``,
so it can be dropped after any stage of any student.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from students.layers import BinaryConv2d


def _unit(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """x / ||x|| over ``dims``, spelled with Mul/ReduceSum/Sqrt (onnx2tf mis-converts some
    ReduceL2 forms)."""
    return x / (x * x).sum(dim=dims, keepdim=True).clamp_min(1e-24).sqrt()


class BinaryProjection(nn.Sequential):
    """1x1 binary conv + BN: a token-wise linear map with 1-bit weights and inputs."""

    def __init__(self, in_channels: int, out_channels: int, binary: bool, **args: Any) -> None:
        super().__init__(
            BinaryConv2d(in_channels, out_channels, 1, binary=binary, **args),
            nn.BatchNorm2d(out_channels),
        )


class BinaryAdditiveAttention(nn.Module):
    """``x + BN(additive_attention(x))`` on an NCHW map (tokens = the H*W positions)."""

    def __init__(self, channels: int, binary: bool = True, **binary_args: Any) -> None:
        super().__init__()
        self.to_query = BinaryProjection(channels, channels, binary, **binary_args)
        self.to_key = BinaryProjection(channels, channels, binary, **binary_args)
        self.w_g = nn.Parameter(torch.randn(1, channels, 1, 1) * channels**-0.5)
        self.scale = channels**-0.5
        self.proj = BinaryProjection(channels, channels, binary, **binary_args)
        self.final = BinaryProjection(channels, channels, binary, **binary_args)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _unit(self.to_query(x), (1,))  # (B, C, H, W), a unit vector per token
        k = _unit(self.to_key(x), (1,))
        a = (q * self.w_g).sum(1, keepdim=True) * self.scale  # (B, 1, H, W)
        a = _unit(a, (2, 3))  # normalised over the tokens
        g = (a * q).sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1): the global query
        out = self.final(self.proj(g * k) + q)
        return x + self.bn(out)
