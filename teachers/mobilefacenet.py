"""MobileFaceNet (Chen et al. 2018) teacher, compatible with the CASIA-WebFace checkpoint.

The module names follow the common PyTorch MobileFaceNet layout (``conv1``, ``dw_conv1``,
``blocks.N.conv.K``, ``conv2``, ``linear7``, ``linear1``) so that the pretrained state dict in
``../shared/weights/mobilefacenet_casia_068.ckpt`` loads strictly.

Input convention: a float tensor ``(N, 3, 112, 112)``, RGB, normalised as
``(pixel - 127.5) / 128`` (an ArcFace-aligned crop). The network was trained on 112x96
SphereFace crops, so :meth:`MobileFaceNet.forward` takes columns ``8:104`` itself. Inputs that are
already 96 pixels wide are used unchanged.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from teachers.checkpoint import load_checkpoint_into, read_state_dict
from teachers.registry import register_teacher

__all__ = [
    "MOBILEFACENET_SETTING",
    "Bottleneck",
    "ConvBlock",
    "MobileFaceNet",
    "build_pretrained_mobilefacenet",
    "load_mobilefacenet_checkpoint",
]

#: (expansion, output channels, repeats, stride) of each bottleneck stage.
MOBILEFACENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)

#: Input height and width the network itself runs on (SphereFace crop).
INPUT_HEIGHT = 112
INPUT_WIDTH = 96
#: Columns of an ArcFace 112x112 crop that make the 112x96 SphereFace crop.
CROP_LEFT = 8
CROP_RIGHT = 104


class ConvBlock(nn.Module):
    """Conv (no bias) + BatchNorm (+ PReLU unless ``linear``); depthwise when ``dw``."""

    def __init__(
        self,
        inp: int,
        oup: int,
        kernel_size: int | tuple[int, int],
        stride: int,
        padding: int,
        dw: bool = False,
        linear: bool = False,
    ) -> None:
        super().__init__()
        self.linear = linear
        groups = inp if dw else 1
        self.conv = nn.Conv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(oup)
        if not linear:
            self.prelu = nn.PReLU(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, batch norm and (unless linear) PReLU."""
        x = self.bn(self.conv(x))
        if self.linear:
            return x
        return self.prelu(x)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear project (MobileNetV2 style)."""

    def __init__(self, inp: int, oup: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block, adding the identity shortcut when shapes allow."""
        out = self.conv(x)
        return x + out if self.connect else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet returning an unnormalised ``embedding_size``-d face embedding.

    ``forward`` takes ``(N, 3, 112, 112)`` RGB normalised as ``(x - 127.5) / 128`` and crops
    columns 8:104 itself; ``(N, 3, 112, 96)`` input is used as is.
    """

    def __init__(self, embedding_size: int = 128) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, dw=True)
        blocks: list[nn.Module] = []
        inp = 64
        for expansion, channels, repeats, stride in MOBILEFACENET_SETTING:
            for i in range(repeats):
                blocks.append(Bottleneck(inp, channels, stride if i == 0 else 1, expansion))
                inp = channels
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(inp, 512, 1, 1, 0)
        self.linear7 = ConvBlock(512, 512, (7, 6), 1, 0, dw=True, linear=True)
        self.linear1 = ConvBlock(512, embedding_size, 1, 1, 0, linear=True)

    @staticmethod
    def crop_input(x: torch.Tensor) -> torch.Tensor:
        """Return the 112x96 SphereFace crop of a 112x112 ArcFace crop (96-wide passes through)."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != INPUT_HEIGHT:
            raise ValueError(
                f"MobileFaceNet expects (N, 3, 112, 112) or (N, 3, 112, 96) input, "
                f"got {tuple(x.shape)}"
            )
        width = x.shape[3]
        if width == INPUT_WIDTH:
            return x
        if width == 112:
            return x[:, :, :, CROP_LEFT:CROP_RIGHT]
        raise ValueError(
            f"MobileFaceNet expects input width 112 or 96, got {width} (shape {tuple(x.shape)})"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed normalised RGB faces: ``(N, 3, 112, 112|96)`` -> ``(N, embedding_size)``."""
        x = self.crop_input(x)
        x = self.conv1(x)
        x = self.dw_conv1(x)
        x = self.blocks(x)
        x = self.conv2(x)
        x = self.linear7(x)
        x = self.linear1(x)
        return x.flatten(1)


@register_teacher("mobilefacenet")
def mobilefacenet(embedding_size: int = 128) -> MobileFaceNet:
    """MobileFaceNet (0.99 M params, 128-d); load pretrained weights with a checkpoint."""
    return MobileFaceNet(embedding_size=embedding_size)


def load_mobilefacenet_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a MobileFaceNet checkpoint (``weights_only=True``, wrapper unwrapped).

    Raises ``CheckpointError`` (a ValueError) naming the file when it cannot be loaded or holds
    no tensors.
    """
    return read_state_dict(path)


def build_pretrained_mobilefacenet(
    path: str | os.PathLike[str], embedding_size: int = 128
) -> MobileFaceNet:
    """Build a :class:`MobileFaceNet`, load ``path`` strictly and return it in eval mode.

    Raises ``CheckpointError`` naming the file and listing missing/unexpected keys (or
    mismatched shapes) when the checkpoint does not fit the architecture.
    """
    model = MobileFaceNet(embedding_size=embedding_size)
    load_checkpoint_into(model, path)
    return model.eval()
