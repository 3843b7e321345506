"""Embed face images with any model (PyTorch, ONNX, TFLite) and score verification pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from faces.transforms import normalise
from faces.verification import (
    accuracy_at_threshold,
    cosine_scores,
    threshold_at_far,
    verification_metrics,
)
from faces.verification_sets import VerificationSet

EmbedFn = Callable[[np.ndarray], np.ndarray]
"""Maps a normalised float32 batch (N, 3, 112, 112) to embeddings (N, D)."""


def torch_embed_fn(model: torch.nn.Module) -> EmbedFn:
    """An EmbedFn running a PyTorch model in eval mode without gradients (channels-last), on
    the device of its parameters (a model mid-training on a GPU), returning CPU arrays."""
    model.eval()

    def fn(batch: np.ndarray) -> np.ndarray:
        device = next(model.parameters()).device
        x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return model(x).float().cpu().numpy()

    return fn


def perturbed_embed_fn(embed_fn: EmbedFn, relative: float, seed: int) -> EmbedFn:
    """``embed_fn`` on inputs scaled by ``1 + relative * N(0, 1)`` per element (fixed seed).

    With ``relative`` near float32 rounding (1e-6), the accuracy of the perturbed model is
    what the model's own numerics allow: a 1-bit network flips the sign of activations that
    sit at zero, and another runtime's rounding moves it as far.
    """
    rng = np.random.default_rng(seed)

    def fn(batch: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal(batch.shape, dtype=np.float32)
        return embed_fn(np.ascontiguousarray(batch * (1 + relative * noise), dtype=np.float32))

    return fn


def embed_images(
    embed_fn: EmbedFn, images: torch.Tensor, batch_size: int = 64, flip: bool = True
) -> np.ndarray:
    """L2-normalised embeddings of image + horizontal flip concatenated (of the image alone
    when not ``flip``), one row per image."""
    rows = []
    for start in range(0, len(images), batch_size):
        x = normalise(images[start : start + batch_size]).numpy()
        parts = [embed_fn(np.ascontiguousarray(x))]
        if flip:
            parts.append(embed_fn(np.ascontiguousarray(x[..., ::-1])))
        e = np.concatenate(parts, axis=1).astype(np.float64)
        e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        rows.append(e.astype(np.float32))
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def pair_embeddings(
    embed_fn: EmbedFn, images: torch.Tensor, pairs: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the images that occur in ``pairs`` (only those are embedded), and the
    pairs' (i, j) as rows of that array: ``scores_of`` turns both into pair scores."""
    used = np.unique(pairs[:, :2])
    emb = embed_images(embed_fn, images[torch.from_numpy(used)], batch_size)
    return emb, np.searchsorted(used, pairs[:, :2])


def scores_of(embeddings: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of rows ``where`` (from ``pair_embeddings``)."""
    return cosine_scores(embeddings[where[:, 0]], embeddings[where[:, 1]])


def pair_scores(
    embed_fn: EmbedFn, images: torch.Tensor, pairs: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Cosine similarity of each pair (i, j, same); only images that occur in pairs are embedded."""
    return scores_of(*pair_embeddings(embed_fn, images, pairs, batch_size))


def verify_metrics(scores: np.ndarray, labels: np.ndarray, dataset: str) -> dict[str, float]:
    """The 10-fold protocol's metrics under the keys ``verify.<dataset>.<metric>``."""
    metrics = verification_metrics(scores, labels)
    return {f"verify.{dataset}.{k}": float(v) for k, v in metrics.items()}


def evaluate_pairs(
    embed_fn: EmbedFn, images: torch.Tensor, pairs: np.ndarray, dataset: str, batch_size: int = 64
) -> dict[str, float]:
    """Verification metrics of a model on pairs, keyed ``verify.<dataset>.<metric>``."""
    return verify_metrics(pair_scores(embed_fn, images, pairs, batch_size), pairs[:, 2], dataset)


# -- several sets ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FarThreshold:
    """Accuracy at one fixed threshold, chosen on set ``source`` for a FAR of ``far`` (as a
    deployment sets it once): ``verify.<set>.acc_at_far`` on every set."""

    source: str
    far: float = 1e-3


def set_scores(
    embed_fn: EmbedFn, sets: Sequence[VerificationSet], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Cosine scores of every set's pairs; sets that share an ``images`` tensor (loaded
    together) have each image that any of their pairs uses embedded once."""
    out: dict[str, np.ndarray] = {}
    groups: dict[int, list[VerificationSet]] = {}
    for s in sets:
        groups.setdefault(id(s.images), []).append(s)
    for group in groups.values():
        every = np.concatenate([s.pairs for s in group])
        emb, where = pair_embeddings(embed_fn, group[0].images, every, batch_size)
        start = 0
        for s in group:
            out[s.name] = scores_of(emb, where[start : start + len(s.pairs)])
            start += len(s.pairs)
    return out


def sets_metrics(
    scores: dict[str, np.ndarray],
    sets: Sequence[VerificationSet],
    threshold: FarThreshold | None = None,
) -> dict[str, float]:
    """``verify.<set>.*`` of every set (its own folds, if any), ``verify.mean.acc`` and, with
    a ``threshold``, ``verify.<set>.acc_at_far`` / ``tar_at_far`` / ``far_at_far`` at the
    threshold chosen on the source set (``verify.threshold_at_far``)."""
    out: dict[str, float] = {}
    for s in sets:
        metrics = verification_metrics(scores[s.name], s.pairs[:, 2], folds=s.folds)
        out.update({f"verify.{s.name}.{k}": float(v) for k, v in metrics.items()})
    out["verify.mean.acc"] = float(np.mean([out[f"verify.{s.name}.acc"] for s in sets]))
    if threshold is not None:
        by_name = {s.name: s for s in sets}
        if threshold.source not in by_name:
            raise ValueError(
                f"threshold set {threshold.source!r} is not one of the evaluation sets "
                f"({', '.join(by_name)})"
            )
        source = by_name[threshold.source]
        t = threshold_at_far(scores[source.name], source.pairs[:, 2], threshold.far)
        out["verify.threshold_at_far"] = t
        for s in sets:
            fixed = accuracy_at_threshold(scores[s.name], s.pairs[:, 2], t)
            out.update({f"verify.{s.name}.{k}_at_far": v for k, v in fixed.items()})
    return out


def evaluate_sets(
    embed_fn: EmbedFn,
    sets: Sequence[VerificationSet],
    threshold: FarThreshold | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Metrics of a model on several sets (:func:`sets_metrics`), each image embedded once."""
    return sets_metrics(set_scores(embed_fn, sets, batch_size), sets, threshold)
