"""Tests for faces.margins (ArcFace/CosFace/combined heads) and faces.registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from faces.margins import MARGIN_HEADS, CombinedMarginHead
from faces.registry import Registry


def _head(name: str, emb: int = 8, classes: int = 5, seed: int = 0, **kwargs) -> CombinedMarginHead:
    torch.manual_seed(seed)
    head = MARGIN_HEADS.create(name, embedding_size=emb, num_classes=classes, **kwargs)
    with torch.no_grad():
        head.weight.copy_(torch.randn(classes, emb))  # well-spread, not tiny, centres
    return head


def _cosines(emb: torch.Tensor, weight: torch.Tensor) -> np.ndarray:
    """cos(theta) between every embedding and class centre, by hand in float64."""
    e = emb.detach().double().numpy()
    w = weight.detach().double().numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return e @ w.T


def _inputs(n: int = 6, emb: int = 8, classes: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, emb, generator=g) * 3.0  # arbitrary norms: the head normalises
    labels = torch.randint(0, classes, (n,), generator=g)
    return x, labels


# ---- margin heads --------------------------------------------------------------------------


def test_arcface_target_and_non_target_logits() -> None:
    s, m = 30.0, 0.5
    head = _head("arcface", s=s, m=m)
    x, labels = _inputs()
    cos = _cosines(x, head.weight)
    theta = np.arccos(np.clip(cos, -1, 1))
    assert np.all(theta + m < math.pi)  # the plain ArcFace branch applies
    logits = head(x, labels).detach().double().numpy()
    assert logits.shape == (6, 5)
    expected = s * cos
    rows = np.arange(6)
    expected[rows, labels.numpy()] = s * np.cos(theta[rows, labels.numpy()] + m)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    # the margin really lowers the target logit
    assert np.all(logits[rows, labels.numpy()] < s * cos[rows, labels.numpy()])


def test_arcface_known_angles_in_2d() -> None:
    s, m = 10.0, 0.3
    head = MARGIN_HEADS.create("arcface", embedding_size=2, num_classes=3, s=s, m=m)
    angles = torch.tensor([0.0, 1.0, 2.0])
    with torch.no_grad():
        head.weight.copy_(torch.stack([angles.cos(), angles.sin()], 1) * 0.01)
    x = torch.tensor([[math.cos(0.3), math.sin(0.3)]]) * 5
    out = head(x, torch.tensor([1]))[0].detach()
    torch.testing.assert_close(out[0], torch.tensor(s * math.cos(0.3)))
    torch.testing.assert_close(out[1], torch.tensor(s * math.cos(0.7 + m)))
    torch.testing.assert_close(out[2], torch.tensor(s * math.cos(1.7)))


def test_arcface_past_pi_falls_back_to_linear_penalty() -> None:
    s, m = 16.0, 0.5
    head = MARGIN_HEADS.create("arcface", embedding_size=2, num_classes=2, s=s, m=m)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    angle = 3.0  # theta + m > pi
    x = torch.tensor([[math.cos(angle), math.sin(angle)]])
    out = head(x, torch.tensor([0]))[0].detach()
    cos_t = math.cos(angle)
    torch.testing.assert_close(out[0], torch.tensor(s * (cos_t - m * math.sin(m))))
    # still strictly below the margin-free logit, so the margin never rewards
    assert float(out[0]) < s * cos_t
    torch.testing.assert_close(out[1], torch.tensor(s * math.sin(angle)))


def test_cosface_target_logit() -> None:
    s, m = 20.0, 0.35
    head = _head("cosface", s=s, m=m)
    x, labels = _inputs(seed=2)
    cos = _cosines(x, head.weight)
    expected = s * cos
    rows = np.arange(6)
    expected[rows, labels.numpy()] = s * (cos[rows, labels.numpy()] - m)
    np.testing.assert_allclose(head(x, labels).detach().double().numpy(), expected, atol=1e-4)


def test_combined_margin_target_logit() -> None:
    s, m1, m2, m3 = 8.0, 1.0, 0.3, 0.2
    head = _head("combined", s=s, m1=m1, m2=m2, m3=m3)
    x, labels = _inputs(seed=3)
    cos = _cosines(x, head.weight)
    theta = np.arccos(cos)
    rows, lab = np.arange(6), labels.numpy()
    expected = s * cos
    expected[rows, lab] = s * (np.cos(m1 * theta[rows, lab] + m2) - m3)
    np.testing.assert_allclose(head(x, labels).detach().double().numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("name", ["arcface", "cosface", "combined"])
def test_no_labels_gives_scaled_cosines(name: str) -> None:
    head = _head(name, s=12.0)
    x, _ = _inputs(seed=4)
    out = head(x).detach().double().numpy()
    np.testing.assert_allclose(out, 12.0 * _cosines(x, head.weight), atol=1e-4)
    # scale invariance of the embedding
    np.testing.assert_allclose(head(x * 7).detach().numpy(), out, atol=1e-4)


def test_default_margins() -> None:
    arc = MARGIN_HEADS.create("arcface", embedding_size=4, num_classes=3)
    assert (arc.s, arc.m1, arc.m2, arc.m3) == (64.0, 1.0, 0.5, 0.0)
    cos = MARGIN_HEADS.create("cosface", embedding_size=4, num_classes=3)
    assert (cos.s, cos.m1, cos.m2, cos.m3) == (64.0, 1.0, 0.0, 0.35)
    assert isinstance(arc, CombinedMarginHead)
    assert arc.weight.shape == (3, 4)


@pytest.mark.parametrize("name", ["arcface", "cosface"])
def test_gradients_flow(name: str) -> None:
    head = _head(name, s=16.0)
    x, labels = _inputs(seed=5)
    x.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(head(x, labels), labels)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert torch.isfinite(head.weight.grad).all()


def test_training_the_head_lowers_loss() -> None:
    head = _head("arcface", s=16.0, m=0.2)
    x, labels = _inputs(n=20, seed=6)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x, labels), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_registry_names_and_unknown_head() -> None:
    assert MARGIN_HEADS.names() == ["arcface", "combined", "cosface"]
    assert "arcface" in MARGIN_HEADS and "sphereface" not in MARGIN_HEADS
    with pytest.raises(KeyError) as info:
        MARGIN_HEADS.create("sphereface", embedding_size=4, num_classes=2)
    msg = str(info.value)
    assert "margin head" in msg and "'sphereface'" in msg
    assert "arcface, combined, cosface" in msg


# ---- registry ------------------------------------------------------------------------------


def test_registry_register_create_get() -> None:
    reg = Registry("widget")

    @reg.register("double")
    def double(x: int = 1) -> int:
        return 2 * x

    @reg.register()
    class Triple:
        def __init__(self, x: int = 1) -> None:
            self.value = 3 * x

    assert double(4) == 8  # the decorator returns the factory itself
    assert reg.create("double", x=5) == 10
    assert reg.create("double") == 2
    assert reg.create("Triple", x=2).value == 6  # name defaults to __name__
    assert reg.get("double") is double
    assert "double" in reg and "Triple" in reg and "nope" not in reg


def test_registry_names_pattern() -> None:
    reg = Registry("model")
    for name in ["vit_small", "vit_tiny", "mobilefacenet", "birealface"]:
        reg.register(name)(lambda: None)
    assert reg.names() == ["birealface", "mobilefacenet", "vit_small", "vit_tiny"]
    assert reg.names("vit_*") == ["vit_small", "vit_tiny"]
    assert reg.names("*face*") == ["birealface", "mobilefacenet"]
    assert reg.names("resnet*") == []


def test_registry_duplicate_registration() -> None:
    reg = Registry("loss")

    def a() -> int:
        return 1

    def b() -> int:
        return 2

    reg.register("x")(a)
    reg.register("x")(a)  # re-registering the same factory (module reload) is fine
    with pytest.raises(ValueError, match="loss 'x' is already registered"):
        reg.register("x")(b)
    assert reg.create("x") == 1


def test_registry_unknown_name() -> None:
    reg = Registry("gadget")
    with pytest.raises(KeyError, match=r"unknown gadget 'q'; known: \(none\)"):
        reg.get("q")
    reg.register("b")(lambda: 1)
    reg.register("a")(lambda: 2)
    with pytest.raises(KeyError, match="known: a, b"):
        reg.create("q")


def test_partial_fc_samples_centres_and_keeps_the_batch_people() -> None:
    from faces.margins import PartialFC, create_margin_head

    torch.manual_seed(0)
    head = create_margin_head("arcface", 16, 1000, sample_rate=0.1, s=32.0)
    assert isinstance(head, PartialFC)
    emb = torch.randn(8, 16, requires_grad=True)
    labels = torch.tensor([3, 3, 999, 10, 500, 7, 7, 0])
    logits, targets = head.train_logits(emb, labels)
    assert logits.shape == (8, 100)
    # each target column is the label's own centre: same logit as the full head gives
    full = head.head(emb, labels)
    torch.testing.assert_close(logits.gather(1, targets[:, None]), full.gather(1, labels[:, None]))
    torch.nn.functional.cross_entropy(logits, targets).backward()
    touched = (head.weight.grad.abs().sum(1) > 0).nonzero().flatten()
    assert len(touched) == 100 and set(labels.tolist()) <= set(touched.tolist())
    assert head(emb.detach()).shape == (8, 1000)  # evaluation sees every centre
    assert not isinstance(create_margin_head("cosface", 16, 10), PartialFC)
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(head.head, 1.5)
