"""Binarized building blocks (Brevitas) designed so that LCE fuses every one into LceBconv2d.

LCE turns ``select(x >= 0, 1, -1)`` feeding an NHWC ``Conv2D`` whose filter is a constant of
+-(per-output-channel scale) into one ``LceBconv2d``; padding must be VALID, SAME (zero) or an
explicit one-padding (``PadV2(x, 1.0)``), grouped binary convolutions need a multiple of 32
input channels per group, and BatchNorm after the convolution folds into the op. Hence:

* the activation binarizer sits *directly* before the convolution (only an optional constant
  one-padding between them), with a constant scale of 1 so nothing needs folding;
* the weight binarizer has a constant per-tensor scale (BatchNorm after the conv learns the
  per-channel magnitude, as in Bi-Real Net / QuickNet) or a mean-|w| scale (DoReFa per tensor,
  XNOR-Net per output channel), which the export folds into the constant filter;
* latent weights are clipped in place to [-clip, clip] after every forward in training
  (Brevitas' in-place clamp, Larq's ``WeightClip``), unless ``weight_clip=None``;
* binary convolutions have stride 1: downsampling happens in full-precision layers, because
  LCE's converter silently re-pads strided convolutions with symmetric explicit padding.

Training-only choices (the straight-through estimator of the sign, the multi-stage switches
``binarize_activations`` / ``binarize_weights``) change gradients or the training forward,
never the exported graph.

ReActNet (Liu et al. 2020) options: ``BinaryConv2d(rsign=True)`` subtracts a learned
per-channel threshold before the sign (:class:`RSign`); :class:`RPReLU` shifts a PReLU's input
and output. RSign exports as a float ``Sub`` of a constant right before the binarizer; LCE
still fuses ``GreaterEqual -> Select -> Conv2D`` behind it into ``LceQuantize`` +
``LceBconv2d`` and keeps the ``SUB`` as a float op (checked by ``tests/test_reactnet.py``), so
no export pass folds it anywhere.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from brevitas.core.function_wrapper import TensorClamp
from brevitas.core.function_wrapper.ops_ste import TensorClampSte
from brevitas.inject.enum import ScalingImplType, ScalingPerOutputType, StatsOp
from brevitas.nn import QuantConv2d, QuantIdentity
from brevitas.quant.binary import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
from torch import nn

LCE_GROUP_CHANNELS = 32

SteKind = Literal["clipped", "identity", "approx_sign", "swish_sign"]
WeightScale = Literal["const", "mean_abs", "mean_abs_channel"]
STE_KINDS: tuple[str, ...] = ("clipped", "identity", "approx_sign", "swish_sign")
WEIGHT_SCALES: tuple[str, ...] = ("const", "mean_abs", "mean_abs_channel")


class SignActivation(SignedBinaryActPerTensorConst):
    """sign(x) in {-1, +1} (sign(0) = +1), scale 1; gradient 1 on |x| <= 1 (clipped STE)."""

    tensor_clamp_impl = TensorClamp


class SignActivationIdentitySte(SignActivation):
    """sign(x) with the plain straight-through estimator: gradient 1 everywhere."""

    tensor_clamp_impl = TensorClampSte


class SignWeight(SignedBinaryWeightPerTensorConst):
    """sign(w) in {-1, +1}, scale 1, latent weights clipped to [-1, 1] in place."""

    scaling_const = 1.0


class SignWeightNoClip(SignWeight):
    """sign(w), scale 1, latent weights left unclipped (identity STE)."""

    tensor_clamp_impl = TensorClampSte


class MeanAbsSignWeight(SignWeightNoClip):
    """DoReFa-style 1-bit weights: sign(w) * mean(|w|) over the whole tensor."""

    scaling_impl_type = ScalingImplType.STATS
    scaling_stats_op = StatsOp.AVE


class ChannelMeanAbsSignWeight(MeanAbsSignWeight):
    """XNOR-Net-style 1-bit weights: sign(w) * mean(|w|) per output channel."""

    scaling_per_output_type = ScalingPerOutputType.CHANNEL


def weight_quantizer(scale: str = "const", clip: float | None = 1.0) -> type:
    """The Brevitas weight quantizer for a scale kind and a latent-weight clip value."""
    if scale not in WEIGHT_SCALES:
        raise ValueError(f"weight_scale must be one of {', '.join(WEIGHT_SCALES)}, got {scale!r}")
    if scale == "mean_abs":
        return MeanAbsSignWeight
    if scale == "mean_abs_channel":
        return ChannelMeanAbsSignWeight
    if clip is None:
        return SignWeightNoClip
    if clip <= 0:
        raise ValueError(f"weight_clip must be positive or null, got {clip}")
    if clip == 1.0:
        return SignWeight
    return type(f"SignWeightClip{clip:g}".replace(".", "_"), (SignWeight,), {"scaling_const": clip})


class _SurrogateSign(torch.autograd.Function):
    """Forward: x unchanged; backward: the gradient of a smooth surrogate of sign at x."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, kind: str, beta: float) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        ctx.kind, ctx.beta = kind, beta
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: D102
        (x,) = ctx.saved_tensors
        if ctx.kind == "approx_sign":  # Bi-Real Net: d/dx of the piecewise quadratic
            g = (2 - 2 * x.abs()).clamp(min=0)
        else:  # swish_sign (BNN+): d/dx of 2 sigmoid(bx)(1 + bx(1 - sigmoid(bx))) - 1
            b = ctx.beta
            g = b * (2 - b * x * torch.tanh(b * x / 2)) / (1 + torch.cosh(b * x))
        return grad * g, None, None


class SignGradient(nn.Module):
    """Shapes the backward pass of the sign that follows (identity in eval and in export)."""

    def __init__(self, kind: str, beta: float = 5.0) -> None:
        super().__init__()
        self.kind, self.beta = kind, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not torch.is_grad_enabled():
            return x
        return _SurrogateSign.apply(x, self.kind, self.beta)


def sign_activation(ste: str = "clipped") -> nn.Module:
    """A 1-bit activation quantizer (Brevitas ``QuantIdentity``) with the chosen STE.

    ``clipped``: gradient 1 on |x| <= 1 (BNN, Hubara et al.); ``identity``: gradient 1
    everywhere; ``approx_sign``: Bi-Real Net's 2 - 2|x| on |x| < 1; ``swish_sign``: the
    derivative of SwishSign with beta = 5 (BNN+). All export to the same ``BipolarQuant``.
    """
    if ste not in STE_KINDS:
        raise ValueError(f"ste must be one of {', '.join(STE_KINDS)}, got {ste!r}")
    if ste == "clipped":
        return QuantIdentity(act_quant=SignActivation, return_quant_tensor=False)
    quant = QuantIdentity(act_quant=SignActivationIdentitySte, return_quant_tensor=False)
    if ste == "identity":
        return quant
    return nn.Sequential(SignGradient(ste), quant)


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) parameter shaped to broadcast over the channels of an (N, C, ...) tensor."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


class RSign(nn.Module):
    """ReActNet's learnable threshold: ``x - beta`` per channel (beta starts at 0), applied
    before the sign, so each channel learns where it flips."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - _per_channel(self.beta, x)


class RPReLU(nn.PReLU):
    """ReActNet's RPReLU: ``PReLU(x - gamma) + zeta`` per channel (gamma, zeta start at 0).

    A subclass of ``nn.PReLU``: the slope keeps the name ``weight``, so a PReLU's weights load
    into it (``gamma`` and ``zeta`` are the only new keys).
    """

    def __init__(self, num_parameters: int, init: float = 0.25) -> None:
        super().__init__(num_parameters, init)
        self.gamma = nn.Parameter(torch.zeros(num_parameters))
        self.zeta = nn.Parameter(torch.zeros(num_parameters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x - _per_channel(self.gamma, x)) + _per_channel(self.zeta, x)


def prelu(channels: int, rprelu: bool = False, init: float = 0.25) -> nn.PReLU:
    """A PReLU, or ReActNet's RPReLU when ``rprelu`` (same ``weight``, plus gamma and zeta)."""
    return RPReLU(channels, init) if rprelu else nn.PReLU(channels, init)


class BinaryConv2d(nn.Module):
    """1-bit activations and 1-bit weights: sign(x) -> pad -> conv (stride 1).

    ``binary=False`` builds the float twin of the same layer (hardtanh activation and float
    weights, same parameter names) used as the full-precision baseline of a student.
    ``ste``, ``weight_clip`` and ``weight_scale``: see :func:`sign_activation` and
    :func:`weight_quantizer`. ``binarize_activations`` / ``binarize_weights`` switch the two
    binarizers off for multi-stage training (full precision -> binary activations -> both);
    the exported model always has both on. ``rsign``: ReActNet's learned threshold
    (:class:`RSign`, ``sign(x - beta)``; the float twin has the same ``beta``:
    ``hardtanh(x - beta)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        groups: int = 1,
        pad_value: float = 1.0,
        binary: bool = True,
        ste: str = "clipped",
        weight_clip: float | None = 1.0,
        weight_scale: str = "const",
        lce_groups: bool = True,
        rsign: bool = False,
    ) -> None:
        super().__init__()
        if groups > 1 and binary and lce_groups and (in_channels // groups) % LCE_GROUP_CHANNELS:
            raise ValueError(
                f"grouped binary conv with {in_channels // groups} input channels per group: "
                f"LCE needs a multiple of {LCE_GROUP_CHANNELS} (lce_groups=False builds it anyway)"
            )
        if pad_value not in (0.0, 1.0):
            raise ValueError(
                f"pad_value must be 0 (zero padding) or 1 (one padding), got {pad_value}"
            )
        pad = kernel_size // 2
        self.binary = binary
        self.pad_value = pad_value
        self.binarize_activations = True
        self.binarize_weights = True
        # absent unless asked for: the state dicts of existing checkpoints stay as they are
        self.rsign: RSign | None = RSign(in_channels) if rsign else None
        self.act: nn.Module = sign_activation(ste) if binary else nn.Hardtanh()
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
                weight_quant=weight_quantizer(weight_scale, weight_clip),
            )
        else:
            self.conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, padding=conv_pad, groups=groups, bias=False
            )
        nn.init.uniform_(self.conv.weight, -0.05, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rsign is not None:
            x = self.rsign(x)
        if not self.binary or (self.binarize_activations and self.binarize_weights):
            return self.conv(self.pad(self.act(x)))
        x = self.act(x) if self.binarize_activations else F.hardtanh(x)
        x = self.pad(x)
        if self.binarize_weights:
            return self.conv(x)
        c = self.conv
        return F.conv2d(x, c.weight, None, c.stride, c.padding, c.dilation, c.groups)


def set_binarization(model: nn.Module, activations: bool, weights: bool) -> int:
    """Switch the binarizers of every binary conv of ``model``; returns how many were set."""
    n = 0
    for m in model.modules():
        if isinstance(m, BinaryConv2d) and m.binary:
            m.binarize_activations, m.binarize_weights = activations, weights
            n += 1
    return n


def binary_convs(model: nn.Module) -> list[str]:
    """Qualified names of the binarized convolutions of a model, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, BinaryConv2d) and m.binary]


def check_rsign(model: nn.Module, rsign: bool) -> None:
    """Refuse ``rsign=True`` on a model with no binary activations.

    "No binary activations" means no ``BinaryConv2d`` at all, i.e. no layer whose input the
    1-bit build binarizes (e.g. ``birealface(depths=(0,))``, ``mobilefacenet_1bit(
    binary_pointwise=())``): there is no sign for RSign to shift. A float twin
    (``binary=False``) is not such a model: its ``BinaryConv2d`` layers stand for binary ones
    and keep RSign's ``beta`` (as ``hardtanh(x - beta)``) so that weights transfer.
    """
    if rsign and not any(isinstance(m, BinaryConv2d) for m in model.modules()):
        raise ValueError(
            f"rsign=True needs binary activations, but this {type(model).__name__} has no "
            "BinaryConv2d layer (no sign for RSign's threshold to shift)"
        )


class ExplicitPadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with PyTorch's symmetric zero padding, spelled as an explicit ``Pad``
    without the bottom/right rows and columns the stride never reaches.

    Same output as ``nn.Conv2d(..., padding=p)`` (and the same parameter names, so a float
    model's weights load as they are), but on even input sizes a stride-2 conv then pads
    top/left only: LCE's converter keeps that padding (it rewrites *symmetric* padding of
    strided convs as SAME, i.e. bottom/right, which shifts the result by a pixel).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s, p in zip(
            (int(x.shape[-1]), int(x.shape[-2])),
            self.kernel_size[::-1],
            self.stride[::-1],
            self.padding[::-1],
            strict=True,
        ):
            out = (n + 2 * p - k) // s + 1
            pads += [p, max((out - 1) * s + k - n - p, 0)]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SamePadConv2d(nn.Sequential):
    """A strided full-precision conv padded like TensorFlow's SAME (extra pixel bottom/right).

    Symmetric padding on a strided conv does not survive LCE's converter (it rewrites
    Pad + VALID into SAME), so strided layers are padded the SAME way from the start. The
    padding follows the input size (odd sizes need one pixel more than even ones); it is a
    constant in the exported graph, whose input size is fixed.
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
        super().__init__(
            nn.Identity(),  # keeps the parameter names of checkpoints (``<name>.1.weight``)
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=bias),
        )
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n in (int(x.shape[-1]), int(x.shape[-2])):
            out = -(-n // self.stride)
            total = max((out - 1) * self.stride + self.kernel_size - n, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return self[1](x)
