"""Input convention shared by every facekd model, stated in one place.

Every teacher and student takes ArcFace-aligned 112x112 RGB crops as a float tensor
(N, 3, 112, 112) normalised as ``(pixel - 127.5) / 128``. A model trained on another crop
(MobileFaceNet: 112x96 SphereFace crop) adapts inside its own ``forward``.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGE_SIZE = 112
PIXEL_MEAN = 127.5
PIXEL_SCALE = 128.0


def normalise(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, H, W) images -> normalised float32 tensor."""
    t = torch.as_tensor(images)
    return (t.float() - PIXEL_MEAN) / PIXEL_SCALE


SHIFT_PX = 4  # random shift of up to 4 px: the small random crop of face training
JITTER = 0.3  # brightness and contrast factors drawn uniformly from 1 +- JITTER / 2


def augment_params(
    n: int, generator: torch.Generator | None = None, flip: bool = True
) -> dict[str, torch.Tensor]:
    """The random draws of :func:`augment` for ``n`` images (CPU tensors).

    Drawn in one fixed order (flips, column shifts, row shifts, brightness, contrast), so the
    batch path (:func:`augment` on a GPU batch) and the per-image path of data-loader workers
    (:func:`augment_one`) sample the same distributions.
    """
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    dx = torch.randint(0, 2 * SHIFT_PX + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * SHIFT_PX + 1, (n,), generator=generator)
    brightness = 1 + (torch.rand(n, generator=generator) - 0.5) * JITTER
    contrast = 1 + (torch.rand(n, generator=generator) - 0.5) * JITTER
    return {"flip": flips, "dx": dx, "dy": dy, "brightness": brightness, "contrast": contrast}


def apply_augment(
    images: torch.Tensor, params: dict[str, torch.Tensor], gather: bool | None = None
) -> torch.Tensor:
    """Apply drawn augmentations to a uint8 batch (N, 3, H, W), on the batch's device.

    On a GPU the shifted crops are one gather from the edge-replicated padding, so a batch
    is augmented in a few kernels; on the CPU they are slices (cheaper there; ``gather``
    forces either path).
    """
    n, c, h, w = images.shape
    device = images.device
    x = images.float()
    flips = params["flip"].to(device)
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    pad = SHIFT_PX
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    if gather is None:
        gather = device.type != "cpu"
    if not gather:  # slicing: no index tensors, ~2x faster than a gather on a CPU
        dx, dy = params["dx"].tolist(), params["dy"].tolist()
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    else:  # one gather kernel instead of N slices
        rows = params["dy"].to(device)[:, None] + torch.arange(h, device=device)  # (N, H)
        cols = params["dx"].to(device)[:, None] + torch.arange(w, device=device)  # (N, W)
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(c, device=device)[None, :, None, None]
        x = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    brightness = params["brightness"].to(device)[:, None, None, None]
    contrast = params["contrast"].to(device)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean * brightness
    return x.clamp(0, 255).to(torch.uint8)


def augment(
    images: torch.Tensor, generator: torch.Generator | None = None, flip: bool = True
) -> torch.Tensor:
    """Training augmentations of the field on a uint8 batch (N, 3, H, W).

    Random horizontal flip (unless ``flip=False``), a random shift of up to 4 px (pad by edge
    replication and crop, the small random crop of face training) and a brightness/contrast
    jitter of +-15%. Returns a uint8 batch of the same shape, on the batch's device (the
    draws come from the CPU ``generator``).
    """
    return apply_augment(images, augment_params(len(images), generator, flip))


def augment_one(image: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """:func:`augment` of one uint8 image (3, H, W): the per-image path of loader workers."""
    return apply_augment(image[None], augment_params(1, generator, flip))[0]


def fill_black_border(images: torch.Tensor, level: int = 24) -> torch.Tensor:
    """Fill the black frame that alignment leaves around tight crops (uint8 N,3,H,W).

    Aligning a tight crop to the 112x112 template warps it and leaves black regions outside
    the source photo (UTKFace crops: about the top 23 rows and 8 px at the sides, rotated).
    Pixels whose brightest channel is at most ``level`` (black plus JPEG ringing) and that
    connect to the image edge through such pixels form the frame; each takes the colour of the
    nearest pixel outside it (nearest-neighbour inpainting), so a model trained on these
    crops sees no black frame that evaluation faces lack. Images without one are unchanged.
    """
    from scipy import ndimage

    out = images.clone()
    array = out.numpy()  # shares memory with ``out``
    dark = array.max(axis=1) <= level  # (N, H, W)
    for i in np.flatnonzero(
        dark[:, [0, -1], :].any(axis=(1, 2)) | dark[:, :, [0, -1]].any(axis=(1, 2))
    ):
        components, _ = ndimage.label(dark[i])
        edge = np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]])
        frame = np.isin(components, np.unique(edge[edge > 0]))
        if frame.all():
            continue
        _, (rows, cols) = ndimage.distance_transform_edt(frame, return_indices=True)
        array[i] = array[i][:, rows, cols]
    return out
