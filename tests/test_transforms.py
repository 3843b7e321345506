"""Filling the black alignment frame of tight crops (UTKFace-style unlabelled faces)."""

from __future__ import annotations

import numpy as np
import torch

from faces.transforms import fill_black_border


def _face(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (60 + 150 * torch.rand(1, 3, 112, 112, generator=g)).to(torch.uint8)


def test_frame_filled_and_photo_untouched() -> None:
    img = _face()
    framed = img.clone()
    framed[:, :, :23] = 0  # black band at the top
    framed[:, :, :, :8] = 3  # and at the left (JPEG noise)
    rows, cols = np.mgrid[:112, :112]
    corner = torch.from_numpy((rows + cols) < 40)  # a rotated corner
    framed[0][:, corner] = 1
    out = fill_black_border(framed)
    frame = torch.zeros(112, 112, dtype=torch.bool)
    frame[:23], frame[:, :8] = True, True
    frame |= corner
    assert int(out[0][:, frame].amax(0).min()) > 24  # no black pixel left in the frame
    assert torch.equal(out[0][:, ~frame], framed[0][:, ~frame])  # the photo is kept
    # the fill takes the nearest photo pixel: the row under the band, column by column
    assert torch.equal(out[0, :, 22, 40:], framed[0, :, 23, 40:])


def test_dark_inside_the_photo_and_unframed_images_are_kept() -> None:
    img = _face(1)
    img[:, :, 50:60, 50:60] = 0  # dark pupils, not connected to the edge
    out = fill_black_border(torch.cat([img, _face(2)]))
    assert torch.equal(out[:1], img)
    assert torch.equal(out[1:], _face(2))
