"""Privacy metrics: image similarity of reconstructions, judge acceptance, 1-bit templates.

Images come in one of three value ranges, always named explicitly:
``"uint8"`` (0..255 integers), ``"unit"`` ([0, 1] floats), ``"normalised"`` (the project's
``(pixel - 127.5) / 128``, about [-1, 1]). PSNR and SSIM are computed in [0, 1] with
``data_range=1``, so the three ranges give the same figures for the same pixels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from faces.evaluate import EmbedFn, embed_images
from faces.transforms import PIXEL_MEAN, PIXEL_SCALE
from faces.verification import verification_metrics

ValueRange = Literal["uint8", "unit", "normalised"]

__all__ = [
    "ValueRange",
    "to_unit",
    "to_uint8",
    "psnr",
    "ssim",
    "impostor_threshold",
    "impostor_scores",
    "acceptance_rate",
    "judge_acceptance",
    "other_image_index",
    "sign_template",
    "hamming_similarity",
    "binary_verification_metrics",
]


def to_unit(images: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """Images in ``value_range`` as float32 in [0, 1] (clamped)."""
    x = images.float()
    if value_range == "uint8":
        x = x / 255.0
    elif value_range == "normalised":
        x = (x * PIXEL_SCALE + PIXEL_MEAN) / 255.0
    elif value_range != "unit":
        raise ValueError(f"value_range must be uint8, unit or normalised, got {value_range!r}")
    return x.clamp(0.0, 1.0)


def to_uint8(images: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """Images in ``value_range`` as uint8 pixels (rounded), as an attacker would save them."""
    return (to_unit(images, value_range) * 255.0).round().to(torch.uint8)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"need two (N, C, H, W) batches of one shape, got {a.shape}, {b.shape}")


def psnr(a: torch.Tensor, b: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """Per-image PSNR in dB, shape (N,); identical images give ``inf``."""
    _check_pair(a, b)
    x, y = to_unit(a, value_range), to_unit(b, value_range)
    return peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(a: torch.Tensor, b: torch.Tensor, value_range: ValueRange) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5), shape (N,); identical images give 1."""
    _check_pair(a, b)
    x, y = to_unit(a, value_range), to_unit(b, value_range)
    out = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    return out.reshape(-1)


# -- the judge -------------------------------------------------------------------------------
def impostor_threshold(impostor_scores: np.ndarray, far: float = 1e-3) -> float:
    """The loosest threshold whose false accept rate on these impostor scores is ``<= far``
    (accept ``score >= threshold``); above the highest score when none may pass."""
    s = np.asarray(impostor_scores, dtype=np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("need at least one finite impostor score")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    values = np.unique(s)[::-1]  # descending
    accepted = np.searchsorted(np.sort(s), values, side="left")  # count below each value
    rate = (s.size - accepted) / s.size  # share with score >= value
    ok = np.flatnonzero(rate <= far + 1e-12)
    if ok.size == 0:
        return float(np.nextafter(values[0], np.inf))
    return float(values[ok[-1]])


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def impostor_scores(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine of every pair of rows with different labels (each unordered pair once)."""
    e = _unit_rows(embeddings)
    y = np.asarray(labels)
    i, j = np.triu_indices(len(e), k=1)
    keep = y[i] != y[j]
    return (e @ e.T)[i[keep], j[keep]]  # one (n, n) product, not n**2 gathered rows


def acceptance_rate(
    reconstruction_emb: np.ndarray, reference_emb: np.ndarray, threshold: float
) -> float:
    """Share of rows whose cosine between a reconstruction's judge embedding and the judge
    embedding of *another* image of the same person is ``>= threshold``."""
    a, b = _unit_rows(reconstruction_emb), _unit_rows(reference_emb)
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ValueError(f"need two non-empty (n, d) arrays of one shape, got {a.shape}, {b.shape}")
    return float(np.mean(np.einsum("ij,ij->i", a, b) >= threshold))


def judge_acceptance(
    judge: EmbedFn,
    reconstructions: torch.Tensor,
    value_range: ValueRange,
    references: torch.Tensor,
    threshold: float,
) -> float:
    """The attack success rate (type-II): reconstructions saved as uint8 and the reference
    images (uint8, another image of each person, row for row) embedded by the judge with the
    project's protocol (image + flip), accepted when their cosine is ``>= threshold``."""
    rec = embed_images(judge, to_uint8(reconstructions, value_range))
    return acceptance_rate(rec, embed_images(judge, references), threshold)


def other_image_index(labels: np.ndarray) -> np.ndarray:
    """For each image, the index of the next image of the same person (cyclically), or -1
    where the person has one image only."""
    y = np.asarray(labels)
    out = np.full(len(y), -1, dtype=np.int64)
    for person in np.unique(y):
        idx = np.flatnonzero(y == person)
        if idx.size > 1:
            out[idx] = np.roll(idx, -1)
    return out


# -- 1-bit templates -------------------------------------------------------------------------
def sign_template(embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    """1-bit template: +1 where the embedding is >= 0, else -1 (int8)."""
    e = np.asarray(embeddings)
    return np.where(e >= 0, 1, -1).astype(np.int8)


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise share of equal bits of two (n, d) sign templates, in [0, 1]."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"templates must be (n, d) of one shape, got {a.shape}, {b.shape}")
    return np.mean(a == b, axis=1)


def binary_verification_metrics(
    embeddings: np.ndarray, where: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """The project's 10-fold verification metrics of sign templates matched by Hamming
    similarity; ``embeddings`` and pair rows ``where`` as from ``faces.evaluate.pair_embeddings``.
    """
    t = sign_template(embeddings)
    scores = hamming_similarity(t[where[:, 0]], t[where[:, 1]])
    return verification_metrics(scores, labels)
