"""Face embedding heads shared by the students (full precision, as in every binary face model)."""

from __future__ import annotations

from torch import nn


class EmbeddingHead(nn.Sequential):
    """MobileFaceNet's head: global depthwise conv (GDC) over the last map, BN, dropout,
    linear to the embedding and BN1d. Linear layers stay float (LCE has no binary dense op)."""

    def __init__(
        self, channels: int, map_size: int, embedding_size: int, dropout: float = 0.0
    ) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, map_size, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )


def output_size(size: int, kernel: int, stride: int, padding: str = "same") -> int:
    """Spatial size after a conv/pool: TensorFlow's SAME (ceil) or VALID rule."""
    if padding == "same":
        return -(-size // stride)
    return (size - kernel) // stride + 1
