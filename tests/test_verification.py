"""Tests for faces.verification (10-fold protocol, AUC, TAR@FAR, ROC plot, cosine)."""

from __future__ import annotations

import numpy as np
import pytest

from faces.verification import (
    cosine_scores,
    roc_auc,
    roc_curve,
    save_roc_plot,
    tar_at_far,
    verification_metrics,
)

KEYS = {"acc", "acc_std", "threshold", "auc", "tar_far1e-3", "tar_far1e-4", "n_pairs"}


def _reference_kfold(scores: np.ndarray, labels: np.ndarray, n_folds: int) -> tuple:
    """Slow, loop-based reference using sklearn's KFold (no shuffle) as InsightFace does."""
    from sklearn.model_selection import KFold

    accs, ths = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(scores):
        uniq = np.unique(scores[train])
        step = np.diff(uniq).min()
        cands = [uniq[0] - step / 2, *((uniq[:-1] + uniq[1:]) / 2), uniq[-1] + step / 2]
        best_t, best_acc = None, -1.0
        for t in cands:  # ascending; first maximum wins
            acc = np.mean((scores[train] >= t) == labels[train])
            if acc > best_acc:
                best_t, best_acc = t, acc
        ths.append(best_t)
        accs.append(np.mean((scores[test] >= best_t) == labels[test]))
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(ths))


def test_perfectly_separable() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    labels[:2] = [0, 1]
    scores = np.where(labels == 1, rng.uniform(0.6, 1.0, 400), rng.uniform(-0.2, 0.4, 400))
    m = verification_metrics(scores, labels)
    assert set(m) == KEYS
    assert m["acc"] == 1.0
    assert m["acc_std"] == 0.0
    assert m["auc"] == 1.0
    assert m["tar_far1e-3"] == 1.0
    assert m["tar_far1e-4"] == 1.0
    assert 0.4 <= m["threshold"] <= 0.6
    assert m["n_pairs"] == 400


def test_random_scores_near_chance() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 6000)
    scores = rng.normal(size=6000)
    m = verification_metrics(scores, labels)
    assert abs(m["auc"] - 0.5) < 0.03
    # Maximising accuracy on noise overfits a little, but stays near chance.
    assert 0.45 < m["acc"] < 0.56


def test_auc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 3000)
    # Heavy rounding creates many ties, including ties across classes.
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    m = verification_metrics(scores, labels)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    # All scores tied: AUC is exactly one half.
    assert roc_auc(np.zeros(10), np.array([0, 1] * 5)) == 0.5


def test_hand_computed_ten_fold() -> None:
    # 10 folds of two pairs: (genuine 0.9, impostor 0.1), except fold 0's genuine scores 0.05.
    scores = np.array([0.9, 0.1] * 10)
    labels = np.array([1, 0] * 10)
    scores[0] = 0.05
    m = verification_metrics(scores, labels, n_folds=10)
    # Every fold trains to threshold 0.5 (midpoint of 0.1 and 0.9). Fold 0 then rejects its
    # genuine pair (acc 0.5); folds 1-9 are perfect. Mean 0.95, population std 0.15.
    assert m["acc"] == pytest.approx(0.95)
    assert m["acc_std"] == pytest.approx(0.15)
    assert m["threshold"] == pytest.approx(0.5)
    # 9 of 10 genuine pairs beat all 10 impostors; the outlier beats none.
    assert m["auc"] == pytest.approx(0.9)
    # Only 10 impostors: FAR <= 1e-3 means zero false accepts, i.e. accept above 0.1.
    assert m["tar_far1e-3"] == pytest.approx(0.9)
    assert m["tar_far1e-4"] == pytest.approx(0.9)


def test_matches_loop_reference_uneven_folds() -> None:
    rng = np.random.default_rng(3)
    n = 237  # 10 folds of 24/23 pairs, like sklearn's KFold
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(labels * 1.2, 1.0), 2)
    acc, std, th = _reference_kfold(scores, labels, 10)
    m = verification_metrics(scores, labels)
    assert m["acc"] == pytest.approx(acc, abs=1e-12)
    assert m["acc_std"] == pytest.approx(std, abs=1e-12)
    assert m["threshold"] == pytest.approx(th, abs=1e-12)


def test_seed_shuffles_folds_deterministically() -> None:
    rng = np.random.default_rng(4)
    labels = np.sort(rng.integers(0, 2, 500))  # sorted: contiguous folds are one-class
    scores = rng.normal(labels * 1.0, 1.0)
    a = verification_metrics(scores, labels, seed=7)
    b = verification_metrics(scores, labels, seed=7)
    c = verification_metrics(scores, labels)
    assert a == b
    assert a["acc"] != c["acc"]
    assert a["auc"] == c["auc"]


def test_tar_at_far_monotonic() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 20000)
    scores = rng.normal(labels * 2.5, 1.0)
    targets = [0.0, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0]
    tars = [tar_at_far(scores, labels, t) for t in targets]
    assert all(x <= y for x, y in zip(tars, tars[1:], strict=False))
    assert tars[-1] == 1.0
    m = verification_metrics(scores, labels)
    assert 0.0 < m["tar_far1e-4"] <= m["tar_far1e-3"] < 1.0
    assert m["tar_far1e-3"] == tars[2]


def test_tar_with_too_few_impostors() -> None:
    # 6 impostors (max 0.4); 5 of the 6 genuine pairs score above the highest impostor.
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.3, 0.5, 0.6, 0.7, 0.8, 0.2, 0.9])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1])
    m = verification_metrics(scores, labels, n_folds=3)
    assert m["tar_far1e-4"] == pytest.approx(5 / 6)
    assert m["tar_far1e-3"] == pytest.approx(5 / 6)


def test_roc_curve_matches_sklearn() -> None:
    from sklearn.metrics import roc_curve as sk_roc

    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 1000)
    scores = np.round(rng.normal(labels, 1.0), 1)
    far, tar, th = roc_curve(scores, labels)
    sk_far, sk_tar, sk_th = sk_roc(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(far, sk_far)
    np.testing.assert_allclose(tar, sk_tar)
    np.testing.assert_allclose(th[1:], sk_th[1:])
    assert th[0] == np.inf
    assert far[0] == 0.0 and tar[0] == 0.0 and far[-1] == 1.0 and tar[-1] == 1.0
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs", "match"),
    [
        (np.zeros(20), np.zeros(19), {}, "same length"),
        (np.zeros((10, 2)), np.zeros((10, 2)), {}, "1-D"),
        (np.arange(20.0), np.r_[np.zeros(10), np.full(10, 2)], {}, "only 0"),
        (np.arange(20.0), np.ones(20), {}, "both classes"),
        (np.arange(20.0), np.zeros(20), {}, "both classes"),
        (np.arange(9.0), np.array([0, 1] * 4 + [1]), {}, "at least 10 pairs"),
        (np.r_[np.nan, np.arange(19.0)], np.array([0, 1] * 10), {}, "finite"),
        (np.r_[np.inf, np.arange(19.0)], np.array([0, 1] * 10), {}, "finite"),
        (np.arange(20.0), np.array([0, 1] * 10), {"n_folds": 1}, "n_folds"),
        (np.array(["a"] * 20), np.array([0, 1] * 10), {}, "numeric"),
    ],
)
def test_input_validation(scores, labels, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        verification_metrics(scores, labels, **kwargs)


def test_accepts_bool_and_float_labels() -> None:
    scores = np.r_[np.linspace(0.0, 0.3, 10), np.linspace(0.7, 1.0, 10)]
    labels = scores > 0.5
    a = verification_metrics(scores, labels)
    b = verification_metrics(scores, labels.astype(np.float32))
    assert a == b and a["acc"] == 1.0


def test_cosine_scores() -> None:
    a = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [-3.0, -4.0], [1.0, 2.0], [1.0, -1.0]])
    np.testing.assert_allclose(cosine_scores(a, b), [1.0, -1.0, 0.0, 0.0], atol=1e-12)
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    ref = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    np.testing.assert_allclose(cosine_scores(x, y), ref, atol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        cosine_scores(x, y[:10])


def test_save_roc_plot(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(8)
    labels = rng.integers(0, 2, 2000)
    curves = {}
    for name, sep in (("teacher", 3.0), ("student", 1.5)):
        far, tar, _ = roc_curve(rng.normal(labels * sep, 1.0), labels)
        curves[name] = (far, tar)
    out = tmp_path / "plots" / "roc.png"
    save_roc_plot(curves, out, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert [p.name for p in out.parent.iterdir()] == ["roc.png"]  # no temp files left
    save_roc_plot(curves, out)  # overwriting works
    with pytest.raises(ValueError):
        save_roc_plot({}, tmp_path / "empty.png")


def test_perturbed_embed_fn_moves_inputs_by_the_relative_noise_only():
    from faces.evaluate import perturbed_embed_fn

    seen: list[np.ndarray] = []

    def identity(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        return batch.reshape(len(batch), -1)

    x = np.random.default_rng(0).uniform(0.5, 1.0, (4, 3, 8, 8)).astype(np.float32)
    a = perturbed_embed_fn(identity, 1e-3, seed=7)(x)
    b = perturbed_embed_fn(identity, 1e-3, seed=7)(x)
    c = perturbed_embed_fn(identity, 1e-3, seed=8)(x)
    np.testing.assert_array_equal(a, b)  # a fixed draw per seed
    assert not np.array_equal(a, c)
    relative = np.abs(a.reshape(x.shape) / x - 1)
    assert 2e-4 < relative.mean() < 2e-3 and relative.max() < 1e-2
    assert seen[0].dtype == np.float32 and seen[0].flags.c_contiguous
    flat = perturbed_embed_fn(identity, 0.0, seed=0)(x)
    np.testing.assert_array_equal(flat, x.reshape(4, -1))
