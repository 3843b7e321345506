"""The distinct images of one or more verification sets, each decoded once.

Images are keyed by their encoded bytes (a BLAKE2 digest), so a face that several sets share
(``lfw.bin`` and the LFW folder it was made from, two pairs files over one root, a file that a
``.bin`` repeats in every pair it belongs to) is decoded once and, since every set's pairs
index the same tensor, embedded once per model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from faces.data import FaceDataError, decode_image_bytes
from faces.transforms import IMAGE_SIZE

__all__ = ["ImagePool"]


class ImagePool:
    """Decoded images by content: ``add_*`` returns the row of an image in ``images()``."""

    def __init__(self, size: int = IMAGE_SIZE) -> None:
        self.size = size
        self._rows: dict[bytes, int] = {}
        self._decoded: list[np.ndarray] = []
        self._stacked: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self._decoded)

    def add_bytes(self, data: bytes, where: str) -> int:
        """The row of these encoded bytes, decoding them if no earlier image had them."""
        key = hashlib.blake2b(data, digest_size=20).digest()
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = len(self._decoded)
            self._decoded.append(decode_image_bytes(data, self.size, where))
            self._stacked = None
        return row

    def add_file(self, path: str | os.PathLike, where: str | None = None) -> int:
        """The row of the image file ``path`` (read and decoded once per distinct content)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise FaceDataError(f"cannot read image {path}: {exc}") from exc
        return self.add_bytes(data, where or f"image {path}")

    def images(self) -> torch.Tensor:
        """Every distinct image so far, uint8 (N, 3, size, size); the same tensor until more
        are added."""
        if self._stacked is None or len(self._stacked) != len(self._decoded):
            out = torch.empty((len(self._decoded), 3, self.size, self.size), dtype=torch.uint8)
            for i, arr in enumerate(self._decoded):
                out[i] = torch.from_numpy(arr)
            self._decoded = list(out.numpy())  # views of the tensor: held once, not twice
            self._stacked = out
        return self._stacked
