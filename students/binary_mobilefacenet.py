"""mobilefacenet_1bit: the MobileFaceNet teacher's own topology with 1-bit pointwise convs.

A student that can start from its teacher (``teachers/mobilefacenet.py``): the same layers
under the same names (``conv1``, ``dw_conv1``, ``blocks.N.conv.K``, ``conv2``, ``linear7``,
``linear1``), the same 112x96 crop of a 112x112 face, the same 512-d global depthwise head.
The stride-1 1x1 convs (each bottleneck's expansion and projection, ``conv2``) are
``BinaryConv2d`` (1-bit weights and activations, stride 1); the stride-2 stem ``conv1``, every
depthwise conv, ``linear7`` and ``linear1`` stay float (LCE has no binary depthwise kernel;
binary convs stay stride 1, see ``students.layers``). :func:`init_from_teacher` copies every
teacher tensor into the student: a binarized conv's teacher weight ``<name>.weight`` becomes
its latent weight ``<name>.conv.weight``; every other name is the teacher's.

Bi-Real shortcuts. Binarizing the activations of a plain MobileNetV2 bottleneck starves it:
the expansion, the depthwise conv and the projection would see only signs of their input.
So, as in Bi-Real Net, each binary 1x1 conv gets a float shortcut added after its BN, shaped
to cost no MACs: the identity when it keeps the channels, the input repeated along the
channels for an expansion (c -> t*c: a CONCATENATION in TFLite, ReActNet's duplication) and
the mean of the t channel groups for a projection (t*c -> c: slices, adds and one MUL). The
two are inverse: repeat, then the group mean gives the input back. The teacher's residual
(``x + block(x)`` where the shapes allow) stays on top.

Weights are scaled by the mean |w| of each output channel (``weight_scale=
"mean_abs_channel"``, XNOR-Net) by default: started from the teacher, that is the L1-closest
1-bit filter to each float one, so a layer's outputs keep the teacher's scale; with the const
scale of the other students they would be ~1/mean|w| (tens of times) larger than what the
teacher's BatchNorm was fitted to (mean-|w| weights are not clipped: ``weight_clip`` only
applies to ``weight_scale="const"``). ``ste`` and the other ``BinaryConv2d`` options pass
through as in the other students. ``binary_pointwise`` names which kinds of 1x1 conv are
binarized (``()`` gives the float teacher itself, on which ``rsign`` is refused: no sign to
shift); ``setting`` a smaller stage table (tests). ReActNet options: ``rsign`` (a learned
threshold before every binary conv's sign), ``rprelu`` (every PReLU of the bottlenecks and
``conv2`` becomes an RPReLU; the float stem keeps its PReLUs).

Strided convs pad like the teacher (symmetric 1) through ``ExplicitPadConv2d``, which LCE's
converter keeps, so a float copy of the teacher computes exactly what the teacher does.

Students import nothing from ``teachers`` (``tests/test_architecture.py``), so the teacher's
stage table, crop and conv block are restated here; ``tests/test_binary_mobilefacenet.py``
checks them against ``teachers.mobilefacenet`` (same table, same crop, same embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from students.layers import BinaryConv2d, ExplicitPadConv2d, check_rsign, prelu
from students.registry import register_student

POINTWISE_KINDS: tuple[str, ...] = ("expand", "project", "conv2")

#: The teacher's (expansion, output channels, repeats, stride) of each bottleneck stage.
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)


def crop_input(x: torch.Tensor) -> torch.Tensor:
    """The teacher's input convention: the 112x96 SphereFace crop (columns 8:104) of a
    112x112 ArcFace crop; 112x96 input passes through."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != 112 or x.shape[3] not in (96, 112):
        raise ValueError(
            f"mobilefacenet_1bit expects (N, 3, 112, 112) or (N, 3, 112, 96) input, "
            f"got {tuple(x.shape)}"
        )
    return x if x.shape[3] == 96 else x[:, :, :, 8:104]


class ConvBlock(nn.Module):
    """The teacher's float conv (no bias) + BN (+ PReLU unless ``linear``), same names."""

    def __init__(self, conv: nn.Conv2d, linear: bool = False) -> None:
        super().__init__()
        self.linear = linear
        self.conv = conv
        self.bn = nn.BatchNorm2d(conv.out_channels)
        if not linear:
            self.prelu = nn.PReLU(conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.linear else self.prelu(x)


def channel_shortcut(x: torch.Tensor, in_channels: int, out_channels: int) -> torch.Tensor:
    """The float Bi-Real shortcut of a 1x1 conv from ``in_channels`` (x's) to ``out_channels``.

    Identity, x repeated t times along the channels (c -> t*c) or the mean of x's t channel
    groups (t*c -> c); channel j of a repeat is channel j mod c of x, which is the group
    layout the mean undoes. The channel counts are Python ints, not ``x.shape``, so that the
    exported slices have constant bounds.
    """
    c = in_channels
    if c == out_channels:
        return x
    if out_channels % c == 0:
        return torch.cat([x] * (out_channels // c), dim=1)
    if c % out_channels == 0:
        # slices, not ``split``: onnx-tf has no converter for opset-18 Split
        groups = [x[:, i : i + out_channels] for i in range(0, c, out_channels)]
        total = groups[0]
        for g in groups[1:]:
            total = total + g
        return total * (1.0 / len(groups))
    raise ValueError(f"no channel shortcut from {c} to {out_channels} channels")


def _pointwise(
    in_channels: int, out_channels: int, binarized: bool, binary: bool, **binary_args: Any
) -> nn.Module:
    """A 1x1 conv: ``BinaryConv2d`` when binarized, else the teacher's float conv."""
    if binarized:
        return BinaryConv2d(in_channels, out_channels, 1, binary=binary, **binary_args)
    return nn.Conv2d(in_channels, out_channels, 1, bias=False)


def _with_shortcut(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BN(conv(x)), plus the channel shortcut of x when ``conv`` is a binary conv."""
    y = bn(conv(x))
    if not isinstance(conv, BinaryConv2d):
        return y
    return y + channel_shortcut(x, conv.conv.in_channels, conv.conv.out_channels)


class BinaryBottleneck(nn.Module):
    """The teacher's inverted residual (1x1 expand, 3x3 depthwise, 1x1 project) with binary
    1x1 convs and their shortcuts; ``conv`` holds the teacher's layers at its indices."""

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        expansion: int,
        binarize: frozenset[str],
        binary: bool = True,
        rprelu: bool = False,
        **binary_args: Any,
    ) -> None:
        super().__init__()
        hidden = inp * expansion
        self.connect = stride == 1 and inp == oup
        depthwise = ExplicitPadConv2d if stride > 1 else nn.Conv2d
        self.conv = nn.Sequential(
            _pointwise(inp, hidden, "expand" in binarize, binary, **binary_args),
            nn.BatchNorm2d(hidden),
            prelu(hidden, rprelu),
            depthwise(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            prelu(hidden, rprelu),
            _pointwise(hidden, oup, "project" in binarize, binary, **binary_args),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        h = c[2](_with_shortcut(c[0], c[1], x))
        h = c[5](c[4](c[3](h)))
        out = _with_shortcut(c[6], c[7], h)
        return x + out if self.connect else out


class BinaryConvBlock(nn.Module):
    """The teacher's ``conv2`` (1x1 conv, BN, PReLU) with a binary conv and its shortcut."""

    def __init__(
        self,
        inp: int,
        oup: int,
        binarized: bool,
        binary: bool = True,
        rprelu: bool = False,
        **binary_args: Any,
    ) -> None:
        super().__init__()
        self.conv = _pointwise(inp, oup, binarized, binary, **binary_args)
        self.bn = nn.BatchNorm2d(oup)
        self.prelu = prelu(oup, rprelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(_with_shortcut(self.conv, self.bn, x))


def _map_size(setting: Sequence[Sequence[int]]) -> tuple[int, int]:
    """Height and width of the last map (the GDC's kernel) for a 112x96 input."""
    h, w = 56, 48  # after the stride-2 conv1
    for *_, stride in setting:  # a 3x3 depthwise conv with padding 1 in each first block
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
    return h, w


class BinaryMobileFaceNet(nn.Module):
    """MobileFaceNet with 1-bit pointwise convs (see module docstring)."""

    def __init__(
        self,
        embedding_size: int = 128,
        binary: bool = True,
        setting: Sequence[Sequence[int]] = MOBILEFACENET_SETTING,
        binary_pointwise: Sequence[str] = POINTWISE_KINDS,
        rsign: bool = False,
        rprelu: bool = False,
        **binary_args: Any,
    ) -> None:
        super().__init__()
        unknown = set(binary_pointwise) - set(POINTWISE_KINDS)
        if unknown:
            raise ValueError(
                f"binary_pointwise: unknown {sorted(unknown)}; use {', '.join(POINTWISE_KINDS)}"
            )
        binarize = frozenset(binary_pointwise)
        binary_args.setdefault("weight_scale", "mean_abs_channel")
        b = dict(binary=binary, rprelu=rprelu, rsign=rsign, **binary_args)
        self.embedding_size = embedding_size
        self.conv1 = ConvBlock(ExplicitPadConv2d(3, 64, 3, 2, 1, bias=False))  # LCE-safe pad
        self.dw_conv1 = ConvBlock(nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False))
        blocks: list[nn.Module] = []
        inp = 64
        for expansion, channels, repeats, stride in setting:
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(BinaryBottleneck(inp, channels, s, expansion, binarize, **b))
                inp = channels
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = BinaryConvBlock(inp, 512, "conv2" in binarize, **b)
        gdc = nn.Conv2d(512, 512, _map_size(setting), groups=512, bias=False)
        self.linear7 = ConvBlock(gdc, linear=True)
        self.linear1 = ConvBlock(nn.Conv2d(512, embedding_size, 1, bias=False), linear=True)
        check_rsign(self, rsign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed normalised RGB faces: ``(N, 3, 112, 112|96)`` -> ``(N, embedding_size)``."""
        x = crop_input(x)
        x = self.blocks(self.dw_conv1(self.conv1(x)))
        return self.linear1(self.linear7(self.conv2(x))).flatten(1)


@register_student("mobilefacenet_1bit")
def mobilefacenet_1bit(
    embedding_size: int = 128, binary: bool = True, **kwargs: Any
) -> BinaryMobileFaceNet:
    """MobileFaceNet with 1-bit expansion, projection and conv2 1x1 convs (Bi-Real shortcuts),
    initialisable from the teacher with :func:`init_from_teacher`."""
    return BinaryMobileFaceNet(embedding_size, binary, **kwargs)


def teacher_key(student: nn.Module, key: str, binary_convs: set[str] | None = None) -> str:
    """The student's name for the teacher tensor ``key`` (a binarized conv's weight moves to
    its ``.conv.weight``)."""
    if binary_convs is None:
        binary_convs = {n for n, m in student.named_modules() if isinstance(m, BinaryConv2d)}
    module, _, leaf = key.rpartition(".")
    return f"{module}.conv.{leaf}" if module in binary_convs else key


def init_from_teacher(
    student: nn.Module, teacher_state_dict: Mapping[str, torch.Tensor]
) -> list[str]:
    """Copy every tensor of a MobileFaceNet teacher's state dict into ``student``.

    Conv weights of binarized layers go into the ``BinaryConv2d``'s latent ``conv.weight``;
    BN, PReLU and float convs into the tensors of the same name. Student tensors the teacher
    lacks (RSign's beta, RPReLU's gamma and zeta) keep their initial values. Returns the
    teacher keys copied, in order. Raises ValueError naming the first key that has no place in
    the student or whose shape differs; the student is left unchanged then.
    """
    binary_convs = {n for n, m in student.named_modules() if isinstance(m, BinaryConv2d)}
    target = student.state_dict()  # shares storage with the student's parameters and buffers
    plan = []
    for key, value in teacher_state_dict.items():
        name = teacher_key(student, key, binary_convs)
        if name not in target:
            raise ValueError(f"teacher tensor {key!r} has no place in the student ({name!r})")
        if target[name].shape != value.shape:
            raise ValueError(
                f"teacher tensor {key!r} has shape {tuple(value.shape)}, the student's "
                f"{name!r} {tuple(target[name].shape)}"
            )
        plan.append((key, name, value))
    with torch.no_grad():
        for _, name, value in plan:
            target[name].copy_(value)
    return [key for key, _, _ in plan]
