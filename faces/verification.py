"""Face verification protocol (LFW / CFP-FP / AgeDB-30 style), numpy only.

This follows InsightFace's ``verification.py``: pairs are split into ``n_folds`` contiguous
folds; for every fold the decision threshold is chosen to maximise accuracy on the other folds
and the accuracy is measured on the held-out fold. Unlike InsightFace, which scans a fixed grid
of distances, the threshold search here is exact: every midpoint between consecutive distinct
training scores is a candidate, evaluated at once with cumulative counts.

Scores are similarities (higher means "same person", e.g. cosine); a pair is accepted as
"same" when ``score >= threshold``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "verification_metrics",
    "roc_curve",
    "roc_auc",
    "tar_at_far",
    "threshold_at_far",
    "accuracy_at_threshold",
    "save_roc_plot",
    "cosine_scores",
]


def _validate(
    scores: np.ndarray, labels: np.ndarray, min_pairs: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Check scores/labels and return them as float64 scores and bool labels."""
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D arrays, got shapes {s.shape} and {y.shape}"
        )
    if s.shape[0] != y.shape[0]:
        raise ValueError(
            f"scores and labels must have the same length, got {s.shape[0]} and {y.shape[0]}"
        )
    if s.dtype.kind not in "biuf":
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores must be finite; found {int(np.sum(~np.isfinite(s)))} NaN/inf")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0/1 (int, float or bool), got dtype {y.dtype}")
    if y.size and not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"labels must contain only 0 (different) and 1 (same); found {bad}")
    y = y.astype(bool)
    if s.shape[0] < min_pairs:
        raise ValueError(f"need at least {min_pairs} pairs, got {s.shape[0]}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.shape[0]:
        raise ValueError(
            "labels must contain both classes (1 = same, 0 = different); "
            f"got {n_pos} genuine and {y.shape[0] - n_pos} impostor pairs"
        )
    return s, y


def _best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising accuracy of ``score >= t`` on the given pairs.

    Candidates are the midpoints between consecutive distinct scores plus one value below the
    minimum (accept all) and one above the maximum (reject all). Ties between candidates are
    broken towards the lowest threshold, like ``np.argmax`` over InsightFace's ascending grid.
    """
    uniq, inv = np.unique(scores, return_inverse=True)
    pos_at = np.bincount(inv, weights=labels, minlength=uniq.size)
    neg_at = np.bincount(inv, weights=~labels, minlength=uniq.size)
    n_pos = pos_at.sum()
    # Candidate k (k = 0..U) rejects the k lowest distinct values and accepts the rest.
    neg_rejected = np.concatenate(([0.0], np.cumsum(neg_at)))
    pos_rejected = np.concatenate(([0.0], np.cumsum(pos_at)))
    correct = (n_pos - pos_rejected) + neg_rejected
    k = int(np.argmax(correct))
    step = float(np.diff(uniq).min()) if uniq.size > 1 else 1.0
    if k == 0:
        return float(uniq[0] - step / 2)
    if k == uniq.size:
        return float(uniq[-1] + step / 2)
    return float((uniq[k - 1] + uniq[k]) / 2)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC over all pairs: ``(far, tar, thresholds)``, FAR ascending.

    ``thresholds[i]`` accepts pairs with ``score >= thresholds[i]``; the first point is
    ``(0, 0)`` with threshold ``+inf`` (accept nothing), the last is ``(1, 1)``.
    """
    s, y = _validate(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each group of equal scores (descending order).
    last = np.flatnonzero(np.diff(s_sorted) != 0)
    last = np.concatenate((last, [s_sorted.size - 1]))
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    n_pos = float(y.sum())
    n_neg = float(y.size - y.sum())
    far = np.concatenate(([0.0], fp / n_neg))
    tar = np.concatenate(([0.0], tp / n_pos))
    thresholds = np.concatenate(([np.inf], s_sorted[last]))
    return far, tar, thresholds


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic with average ranks for ties."""
    s, y = _validate(scores, labels)
    uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    avg_rank = starts + (counts + 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inv]
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far_target: float) -> float:
    """Highest TAR over thresholds whose FAR is ``<= far_target`` (computed on all pairs).

    With fewer than ``1 / far_target`` impostor pairs this is the TAR at the loosest threshold
    that still admits zero false accepts (just above the highest impostor score).
    """
    if not 0.0 <= far_target <= 1.0:
        raise ValueError(f"far_target must be in [0, 1], got {far_target}")
    far, tar, _ = roc_curve(scores, labels)
    ok = far <= far_target + 1e-12
    return float(tar[ok].max())


def threshold_at_far(scores: np.ndarray, labels: np.ndarray, far_target: float) -> float:
    """The loosest threshold whose FAR on these pairs is ``<= far_target`` (as deployment sets
    it once on one set and keeps it): accept pairs with ``score >= threshold``."""
    if not 0.0 <= far_target <= 1.0:
        raise ValueError(f"far_target must be in [0, 1], got {far_target}")
    far, _, thresholds = roc_curve(scores, labels)
    ok = np.flatnonzero(far <= far_target + 1e-12)
    return float(thresholds[ok[-1]])


def accuracy_at_threshold(
    scores: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float]:
    """``acc``, ``tar`` and ``far`` of the fixed decision ``score >= threshold`` on all pairs."""
    s, y = _validate(scores, labels)
    accept = s >= threshold
    return {
        "acc": float(np.mean(accept == y)),
        "tar": float(accept[y].mean()),
        "far": float(accept[~y].mean()),
    }


def _fold_split(
    n: int, n_folds: int, seed: int | None, folds: np.ndarray | None
) -> list[np.ndarray]:
    """Index arrays of the test folds: given fold ids, or contiguous (optionally shuffled)."""
    if folds is not None:
        f = np.asarray(folds)
        if f.shape != (n,) or f.dtype.kind not in "iu":
            raise ValueError(f"folds must be {n} integer fold ids, got shape {f.shape} {f.dtype}")
        ids = np.unique(f)
        if ids.size < 2:
            raise ValueError(
                f"explicit folds need at least 2 distinct fold ids, got {ids.tolist()}"
            )
        return [np.flatnonzero(f == k) for k in ids]
    idx = np.arange(n)
    if seed is not None:
        idx = np.random.default_rng(seed).permutation(n)
    # np.array_split gives the same fold sizes as sklearn's KFold (first n % k folds are larger).
    return np.array_split(idx, n_folds)


def verification_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    n_folds: int = 10,
    seed: int | None = None,
    folds: np.ndarray | None = None,
) -> dict[str, float]:
    """K-fold verification accuracy plus AUC and TAR@FAR over all pairs.

    ``seed=None`` (the standard protocol) uses contiguous folds in the given pair order, like
    InsightFace's ``KFold(n_splits=10, shuffle=False)``; an integer seed shuffles the pairs with
    that seed before splitting. ``folds`` (one integer id per pair, as LFW's and CFP's
    protocol files define them) replaces both. Returns ``acc``, ``acc_std`` (population std
    over folds), ``threshold`` (mean chosen threshold), ``auc``, ``tar_far1e-3``,
    ``tar_far1e-4`` and ``n_pairs``.
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    s, y = _validate(scores, labels, min_pairs=n_folds if folds is None else 2)
    n = s.shape[0]
    folds = _fold_split(n, n_folds, seed, folds)
    n_folds = len(folds)
    accs = np.empty(n_folds)
    thresholds = np.empty(n_folds)
    for i, test in enumerate(folds):
        train_mask = np.ones(n, dtype=bool)
        train_mask[test] = False
        t = _best_threshold(s[train_mask], y[train_mask])
        thresholds[i] = t
        accs[i] = np.mean((s[test] >= t) == y[test])
    out: dict[str, float] = {
        "acc": float(accs.mean()),
        "acc_std": float(accs.std()),
        "threshold": float(thresholds.mean()),
        "auc": roc_auc(s, y),
    }
    out["tar_far1e-3"] = tar_at_far(s, y, 1e-3)
    out["tar_far1e-4"] = tar_at_far(s, y, 1e-4)
    out["n_pairs"] = n
    return out


def cosine_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` embedding arrays (zero rows score 0)."""
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if b.ndim == 1:
        b = b[None, :]
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"embeddings must be 2-D arrays of the same shape, got {a.shape} and {b.shape}"
        )
    eps = 1e-12
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), eps)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), eps)
    return np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)


def save_roc_plot(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    title: str = "Face verification ROC",
) -> None:
    """Draw ROC curves ``{label: (far, tar)}`` on a log-FAR axis and write a PNG atomically."""
    if not curves:
        raise ValueError("curves must contain at least one (far, tar) pair")
    # Figure + Agg canvas directly: no pyplot global state, no backend switching.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, (far, tar) in curves.items():
        far = np.asarray(far, dtype=np.float64)
        tar = np.asarray(tar, dtype=np.float64)
        if far.shape != tar.shape or far.ndim != 1:
            raise ValueError(f"curve {label!r}: far and tar must be 1-D of equal length")
        ax.plot(far, tar, label=str(label), linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("False accept rate (FAR)")
    ax.set_ylabel("True accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
