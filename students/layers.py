"""Binarized building blocks (Brevitas) designed so that LCE fuses every one into LceBconv2d.

LCE turns ``select(x >= 0, 1, -1)`` feeding an NHWC ``Conv2D`` whose filter is a constant of
+-(per-output-channel scale) into one ``LceBconv2d``; padding must be VALID, SAME (zero) or an
explicit one-padding (``PadV2(x, 1.0)``), grouped binary convolutions need a multiple of 32
input channels per group, and BatchNorm after the convolution folds into the op. Hence:

* the activation binarizer sits *directly* before the convolution (only an optional constant
  one-padding between them), with a constant scale of 1 so nothing needs folding;
* the weight binarizer has a constant per-tensor scale (BatchNorm after the conv learns the
  per-channel magnitude, as in Bi-Real Net / QuickNet), and latent weights are clipped to
  [-1, 1] (latent-weight clipping with a straight-through estimator);
* binary convolutions have stride 1: downsampling happens in full-precision layers, because
  LCE's converter silently re-pads strided convolutions with symmetric explicit padding.
"""

from __future__ import annotations

import torch
from brevitas.nn import QuantConv2d, QuantIdentity
from brevitas.quant.binary import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
from torch import nn

LCE_GROUP_CHANNELS = 32


class SignActivation(SignedBinaryActPerTensorConst):
    """sign(x) in {-1, +1} (sign(0) = +1), scale 1, clipped straight-through gradient."""


class SignWeight(SignedBinaryWeightPerTensorConst):
    """sign(w) in {-1, +1}, scale 1, latent weights clipped to [-1, 1] in place."""

    scaling_const = 1.0


class BinaryConv2d(nn.Module):
    """1-bit activations and 1-bit weights: sign(x) -> pad -> conv (stride 1).

    ``binary=False`` builds the float twin of the same layer (hardtanh activation and float
    weights, same parameter names) used as the full-precision baseline of a student.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        groups: int = 1,
        pad_value: float = 1.0,
        binary: bool = True,
    ) -> None:
        super().__init__()
        if groups > 1 and binary and (in_channels // groups) % LCE_GROUP_CHANNELS:
            raise ValueError(
                f"grouped binary conv with {in_channels // groups} input channels per group: "
                f"LCE needs a multiple of {LCE_GROUP_CHANNELS}"
            )
        if pad_value not in (0.0, 1.0):
            raise ValueError(
                f"pad_value must be 0 (zero padding) or 1 (one padding), got {pad_value}"
            )
        pad = kernel_size // 2
        self.binary = binary
        self.pad_value = pad_value
        if binary:
            self.act: nn.Module = QuantIdentity(act_quant=SignActivation, return_quant_tensor=False)
        else:
            self.act = nn.Hardtanh()
        self.pad = nn.ConstantPad2d(pad, pad_value) if pad and pad_value == 1.0 else nn.Identity()
        conv_pad = pad if pad_value == 0.0 else 0
        if binary:
            self.conv: nn.Conv2d = QuantConv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=conv_pad,
                groups=groups,
                bias=False,
                weight_quant=SignWeight,
            )
        else:
            self.conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, padding=conv_pad, groups=groups, bias=False
            )
        nn.init.uniform_(self.conv.weight, -0.05, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(self.act(x)))


def binary_convs(model: nn.Module) -> list[str]:
    """Qualified names of the binarized convolutions of a model, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, BinaryConv2d) and m.binary]


class SamePadConv2d(nn.Sequential):
    """A strided full-precision conv padded like TensorFlow's SAME (extra pixel bottom/right).

    Symmetric padding on a strided conv does not survive LCE's converter (it rewrites
    Pad + VALID into SAME), so strided layers are padded the SAME way from the start.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        total = max(kernel_size - stride, 0)
        before, after = total // 2, total - total // 2
        super().__init__(
            nn.ZeroPad2d((before, after, before, after)),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=bias),
        )
