"""Hand-checkable cases of every distillation loss, unlabelled masking, the baseline path."""

from __future__ import annotations

import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill.losses import (
    LogitDistillationLoss,
    LossContext,
    MarginDistillationLoss,
    MarginHeadLoss,
    RKDAngleLoss,
    RKDDistanceLoss,
    SimilarityDistributionLoss,
    SimilarityPreservingLoss,
    WeightedLoss,
    create_loss,
    label_free,
    loss_spec,
    method_name,
    uses_bank,
    uses_teacher,
)
from distill.module import Distiller, class_centres
from faces.margins import create_margin_head
from pipelines.core.config import DistillConfig
from teachers.train import margin_loss

D, C = 16, 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _emb(n: int = 8, dim: int = D, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _rotation(dim: int = D, seed: int = 1) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q


def _context(seed: int = 0) -> LossContext:
    g = torch.Generator().manual_seed(seed)
    return LossContext(
        D, C, centres=F.normalize(torch.randn(C, D, generator=g), dim=1), spread=torch.rand(C)
    )


# ---- relational: RKD distance and angle, similarity preserving -------------------------------


def test_rkd_distance_zero_for_identical_scaled_or_rotated() -> None:
    t = _emb()
    for loss in (RKDDistanceLoss(), RKDDistanceLoss(normalize=False)):
        assert float(loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
        assert float(loss(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)  # distances / mean
        assert float(loss(t @ _rotation(), t)) == pytest.approx(0.0, abs=1e-5)
        assert float(loss(_emb(seed=5), t)) > 0.01
    # raw distances are also translation invariant
    assert float(RKDDistanceLoss(normalize=False)(t + 7.0, t)) == pytest.approx(0.0, abs=1e-4)


def test_rkd_distance_hand_computed() -> None:
    # teacher: an equilateral triangle (distances 1, 1, 1 -> 1 after / mean);
    # student: 0, 1, 2 on a line (1, 1, 2; mean 4/3 -> 0.75, 0.75, 1.5).
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    # 3x3 matrices (zero diagonal): four entries off by 0.25, two by 0.5; Huber 0.5 x^2
    expected = (4 * 0.5 * 0.25**2 + 2 * 0.5 * 0.5**2) / 9
    got = RKDDistanceLoss(normalize=False)(s, t)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_rkd_angle_invariances_and_hand_computed() -> None:
    t = _emb()
    loss = RKDAngleLoss(normalize=False)
    assert float(loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(2.0 * t @ _rotation() + 3.0, t)) == pytest.approx(0.0, abs=1e-5)
    assert float(RKDAngleLoss()(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(_emb(seed=5), t)) > 0.01
    # a right angle at the middle point (teacher) against a straight line (student): the
    # cosines at j=1 between (0, 2) are 0 and -1; at j=0 and j=2 the line's angle is 0 where
    # the right isosceles triangle's is 45 degrees (cos 1 vs 1/sqrt 2), twice each.
    t = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    a = 1 - 1 / math.sqrt(2)
    huber = {0.0: 0.0, 1.0: 0.5, a: 0.5 * a * a}
    # entries (j, i, k) with i, k != j: at j=1 the pairs (0,2),(2,0) differ by 1; at j=0 and
    # j=2 the pairs (1,2),(2,1) / (0,1),(1,0) differ by a; equal pairs (i=k) give 1 vs 1.
    expected = (2 * huber[1.0] + 4 * huber[a]) / 27
    assert float(loss(s, t)) == pytest.approx(expected, rel=1e-5)


def test_similarity_preserving_invariances_and_hand_computed() -> None:
    t = _emb()
    loss = SimilarityPreservingLoss()
    assert float(loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(5.0 * t, t)) == pytest.approx(0.0, abs=1e-6)  # rows of G normalised
    assert float(loss(t @ _rotation(), t)) == pytest.approx(0.0, abs=1e-6)
    # student and teacher may have different widths: only b x b similarities are compared
    assert float(loss(_emb(dim=4, seed=3), t)) > 0
    # b = 2: orthogonal student rows (G_s = I) against parallel teacher rows (G_t rows
    # (1, 1)/sqrt 2): each row of the difference is (1 - 1/sqrt 2, -1/sqrt 2) up to order;
    # squared, summed over both rows and divided by b^2 = 4.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tt = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = 2 * ((1 - 1 / math.sqrt(2)) ** 2 + 0.5) / 4
    assert float(loss(s, tt)) == pytest.approx(expected, rel=1e-6)


# ---- SEED: similarity distributions over a bank of teacher embeddings ----------------------


def _bank_context(n: int = 40, seed: int = 0) -> LossContext:
    g = torch.Generator().manual_seed(seed)
    return LossContext(D, bank=F.normalize(torch.randn(n, 2, D, generator=g), dim=-1))


def test_seed_is_zero_for_the_teacher_and_hand_computed() -> None:
    ctx = _bank_context()
    loss = SimilarityDistributionLoss(T_s=0.1, T_t=0.1)
    loss.bind(ctx)
    assert loss.bank.shape == (80, D)  # every image and its mirror
    t = ctx.bank[:6, 0]
    assert float(loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)  # cosine: scale-free
    # a bank of two orthogonal unit vectors: the teacher on the first, the student on the
    # second; p_t = softmax(1/T, 0) and p_s = softmax(0, 1/T): KL = (p1 - p2) * (1/T)
    two = LossContext(2, bank=torch.eye(2)[:, None, :])
    loss = SimilarityDistributionLoss(T_s=0.5, T_t=0.5)
    loss.bind(two)
    p1 = 1 / (1 + math.exp(-2.0))
    expected = p1 * math.log(p1 / (1 - p1)) + (1 - p1) * math.log((1 - p1) / p1)
    got = loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_seed_prefers_the_own_teacher_embedding_and_trains_towards_it() -> None:
    ctx = _bank_context()
    loss = SimilarityDistributionLoss()
    loss.bind(ctx)
    t = ctx.bank[:4, 0]
    near_own = F.normalize(t + 0.3 * _emb(4, seed=2), dim=1)
    near_other = F.normalize(ctx.bank[10:14, 0] + 0.3 * _emb(4, seed=2), dim=1)
    assert float(loss(near_own, t)) < float(loss(near_other, t))
    s = _emb(4, seed=3).requires_grad_(True)
    before = float(loss(s, t))
    opt = torch.optim.Adam([s], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss(s, t).backward()
        opt.step()
    assert float(loss(s, t)) < 0.01 * before
    # each student embedding is now nearest to its own teacher embedding among the bank
    nearest = (F.normalize(s.detach(), dim=1) @ loss.bank.t()).argmax(1)
    assert nearest.tolist() == [0, 2, 4, 6]  # bank rows: image 0, its mirror, image 1, ...


def test_seed_needs_a_bank_and_checks_its_parameters() -> None:
    assert uses_bank({"seed": 1.0}) and not uses_bank({"cosine": 1.0})
    assert label_free({"seed": 1.0}) and uses_teacher({"seed": 1.0})
    with pytest.raises(ValueError, match="bank"):
        WeightedLoss({"seed": 1.0})
    with pytest.raises(ValueError, match="bank"):
        WeightedLoss({"seed": 1.0}, LossContext(D))
    with pytest.raises(ValueError, match="temperatures"):
        create_loss("seed", {"T_s": 0.0})
    with pytest.raises(ValueError, match="bank_size"):
        create_loss("seed", {"bank_size": -1})
    loss = create_loss("seed", {"bank_size": 16, "seed": 3})
    loss.bind(_bank_context())
    assert loss.bank.shape == (16, D)
    assert "bank" not in loss.state_dict()  # rebuilt from the data, never checkpointed


def test_relational_losses_give_gradients_to_the_student_only() -> None:
    seed = SimilarityDistributionLoss()
    seed.bind(LossContext(D, bank=_emb(20).reshape(10, 2, D)))
    for loss in (RKDDistanceLoss(), RKDAngleLoss(), SimilarityPreservingLoss(), seed):
        s = _emb(seed=4).requires_grad_(True)
        t = _emb().requires_grad_(True)
        loss(s, t).backward()
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
        assert t.grad is None


# ---- logit distillation -----------------------------------------------------------------------


def test_logit_distillation() -> None:
    loss = LogitDistillationLoss(T=2.0, s=10.0)
    loss.bind(_context())
    t = _emb()
    assert float(loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(4.0 * t, t)) == pytest.approx(0.0, abs=1e-6)  # cosines only
    s = _emb(seed=9)
    w = loss.centres
    p_t = F.softmax(F.linear(F.normalize(t), w) * 5.0, dim=1)
    log_p_s = F.log_softmax(F.linear(F.normalize(s), w) * 5.0, dim=1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(1).mean() * 4.0  # KL * T^2
    torch.testing.assert_close(loss(s, t), expected)
    assert not list(loss.parameters())  # the centres are frozen
    assert label_free({"logit": 1.0})


# ---- MarginDistillation ------------------------------------------------------------------------


def test_margin_distillation_head_is_the_teacher_centres_frozen_by_default() -> None:
    ctx = _context()
    loss = MarginDistillationLoss()
    loss.bind(ctx)
    torch.testing.assert_close(loss.centres, F.normalize(ctx.centres, dim=1))
    assert not list(loss.parameters())
    trainable = MarginDistillationLoss(train_centres=True)
    trainable.bind(ctx)
    assert [p.shape for p in trainable.parameters()] == [(C, D)]
    torch.testing.assert_close(trainable.centres.detach(), F.normalize(ctx.centres, dim=1))


def test_margin_distillation_per_sample_margins_follow_the_authors_rule() -> None:
    ctx = _context()
    loss = MarginDistillationLoss(m_max=0.5, m_min=0.2)
    loss.bind(ctx)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    centres = loss.centres[labels]
    # teacher embeddings at known cosines to their class centres
    cosines = torch.tensor([0.9, 0.6, 0.3, 0.0, -0.4, 0.45])
    other = _emb(6, seed=7)  # unit vectors orthogonal to the centres
    other = F.normalize(other - (other * centres).sum(1, keepdim=True) * centres, dim=1)
    teacher = cosines[:, None] * centres + (1 - cosines[:, None] ** 2).sqrt() * other
    m = loss.margins(teacher, labels)
    expected = (0.2 + 0.3 * cosines / 0.9).clamp(0.2, 0.5)  # m_min + (m_max - m_min) d / max d
    torch.testing.assert_close(m, expected, atol=1e-5, rtol=0)
    assert float(m.max()) == pytest.approx(0.5) and float(m.min()) == pytest.approx(0.2)
    # ordered: the closer the teacher holds a face to its centre, the larger its margin
    order = cosines.argsort()
    assert torch.all(m[order][1:] >= m[order][:-1])


def test_margin_distillation_per_class_margins_are_ordered_by_spread() -> None:
    ctx = _context()
    ctx.spread = torch.tensor([0.9, 0.5, 0.7, 0.2, 0.85])
    loss = MarginDistillationLoss(per="class", m_max=0.5, m_min=0.2)
    loss.bind(ctx)
    m = loss.class_margins
    assert torch.all((m >= 0.2 - 1e-6) & (m <= 0.5 + 1e-6))
    assert float(m[0]) == pytest.approx(0.5)  # the tightest class
    assert m.argsort().tolist() == ctx.spread.argsort().tolist()
    labels = torch.tensor([3, 0])
    torch.testing.assert_close(loss.margins(_emb(2), labels), m[labels])


def test_margin_distillation_with_one_margin_is_arcface_on_the_teacher_centres() -> None:
    ctx = _context()
    loss = MarginDistillationLoss(s=16.0, m_max=0.3, m_min=0.3)
    loss.bind(ctx)
    head = create_margin_head("arcface", D, C, s=16.0, m=0.3)
    with torch.no_grad():
        head.weight.copy_(ctx.centres)
    s, labels = _emb(10, seed=2), torch.arange(10) % C
    expected = F.cross_entropy(head(s, labels), labels)
    torch.testing.assert_close(loss(s, _emb(10, seed=3), labels), expected)


def test_margin_distillation_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="m_min"):
        MarginDistillationLoss(m_max=0.2, m_min=0.5)
    with pytest.raises(ValueError, match="per"):
        MarginDistillationLoss(per="batch")
    with pytest.raises(ValueError, match="class centres"):
        MarginDistillationLoss().bind(LossContext(D, C))


def test_class_centres_are_normalised_means_or_the_teacher_head() -> None:
    e = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[0.0, 2.0], [0.0, 1.0]], [[1.0, 1.0], [1, 1]]])
    labels = torch.tensor([0, 0, 1])
    centres, spread = class_centres(e, labels, 2)
    c0 = F.normalize(torch.tensor([1.0, 1.0]), dim=0)  # mean of (1,0),(1,0),(0,1),(0,1)
    torch.testing.assert_close(centres, torch.stack([c0, c0]))
    torch.testing.assert_close(spread, torch.tensor([1 / math.sqrt(2), 1.0]))
    head = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    centres, spread = class_centres(e[:, 0], labels, 2, head)
    torch.testing.assert_close(centres, torch.eye(2))
    torch.testing.assert_close(spread, torch.tensor([0.5, 1 / math.sqrt(2)]))


# ---- the no-teacher baseline --------------------------------------------------------------------


def test_margin_head_losses_need_no_teacher() -> None:
    assert not uses_teacher({"arcface": {"s": 32, "m": 0.3}})
    assert method_name({"arcface": 1.0}) == "none"
    assert method_name({"cosface": 1.0}, unlabelled=True) == "none"
    assert method_name({"cosine": 1.0, "rkd_distance": 1.0}) == "cosine+rkd_distance"
    assert method_name({"cosine": 1.0}, unlabelled=True) == "cosine+unlabelled"
    assert method_name({"margin_distillation": 1.0}, unlabelled=True) == "margin_distillation"
    loss = create_loss("arcface", {"s": 16.0, "m": 0.2})
    assert isinstance(loss, MarginHeadLoss)
    loss.bind(LossContext(D, C))
    s, labels = _emb(), torch.arange(8) % C
    torch.testing.assert_close(loss(s, None, labels), margin_loss(loss.head, s, labels)[0])
    with pytest.raises(ValueError, match="takes m, s, sample_rate"):
        create_loss("arcface", {"m2": 0.1})


class _NoBNStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))


def _fit(module: pl.LightningModule, loader: DataLoader, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return trainer


def test_student_trains_without_a_teacher() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(16) % C
    module = Distiller(
        _NoBNStudent(), None, {"arcface": {"s": 8.0, "m": 0.2}}, lr=1e-2, context=_context()
    )
    assert module.teacher is None
    head = module.loss.losses["arcface"].head
    before = head.weight.detach().clone()
    trainer = _fit(module, DataLoader(TensorDataset(images, torch.arange(16), labels), 8), 4)
    assert trainer.global_step == 4
    assert not torch.equal(head.weight, before)  # the head is trained with the student
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert id(head.weight) in opt_params
    with pytest.raises(ValueError, match="need a teacher"):
        Distiller(_NoBNStudent(), None, {"cosine": 1.0})


# ---- unlabelled images: label -1, masked in labelled losses ---------------------------------


def test_labelled_losses_see_only_labelled_rows() -> None:
    ctx = _context()
    terms = {"cosine": 1.0, "margin_distillation": {"weight": 2.0, "s": 8.0}}
    weighted = WeightedLoss(terms, ctx)
    s, t = _emb(8, seed=1), _emb(8, seed=2)
    labels = torch.tensor([0, -1, 2, -1, -1, 1, 4, -1])
    total, parts = weighted(s, t, labels)
    keep = labels >= 0
    md = weighted.losses["margin_distillation"]
    torch.testing.assert_close(parts["margin_distillation"], md(s[keep], t[keep], labels[keep]))
    torch.testing.assert_close(parts["cosine"], weighted.losses["cosine"](s, t))  # every row
    torch.testing.assert_close(total, parts["cosine"] + 2.0 * parts["margin_distillation"])
    # the unlabelled rows do not change the labelled loss at all
    s2 = s.clone()
    s2[~keep] = 100.0
    torch.testing.assert_close(
        weighted(s2, t, labels)[1]["margin_distillation"], parts["margin_distillation"]
    )


def test_batch_without_labels_gives_labelled_losses_a_connected_zero() -> None:
    weighted = WeightedLoss({"cosine": 1.0, "arcface": {"s": 8.0}}, _context())
    s = _emb(4).requires_grad_(True)
    total, parts = weighted(s, _emb(4, seed=1), torch.full((4,), -1))
    assert float(parts["arcface"].detach()) == 0.0
    total.backward()
    head = weighted.losses["arcface"].head.weight
    assert head.grad is not None and torch.equal(head.grad, torch.zeros_like(head))
    # no labels at all (a bare image batch) counts as unlabelled
    assert float(weighted(_emb(4), _emb(4, seed=1))[1]["arcface"]) == 0.0


def test_distiller_masks_unlabelled_images_in_training() -> None:
    """Unlabelled images (label -1) reach the label-free loss only."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    labels = torch.tensor([0, 1, -1, -1, 2, -1, 3, -1])
    cached = _emb(8 * 2, seed=4).view(8, 2, D)
    seen: dict[str, list[int]] = {"cosine": [], "margin_distillation": []}
    module = Distiller(
        _NoBNStudent(),
        None,
        {"cosine": 1.0, "margin_distillation": 1.0},
        cached=cached,
        context=_context(),
        augment=False,
    )
    for name, loss in module.loss.losses.items():
        loss.register_forward_pre_hook(lambda m, a, n=name: seen[n].append(len(a[0])))
    _fit(module, DataLoader(TensorDataset(images, torch.arange(8), labels), 8), 1)
    assert seen == {"cosine": [8], "margin_distillation": [4]}


# ---- configuration ----------------------------------------------------------------------------


def test_losses_config_takes_weights_or_parameters() -> None:
    old = DistillConfig(losses={"cosine": 1.0, "l2": 0.5})
    assert old.losses == {"cosine": 1.0, "l2": 0.5}
    new = DistillConfig(
        losses={
            "cosine": 1.0,
            "rkd_distance": {"weight": 1.0},
            "margin_distillation": {"weight": 1.0, "s": 64, "m_max": 0.5, "m_min": 0.2},
        }
    )
    assert loss_spec(new.losses["margin_distillation"]) == (
        1.0,
        {"s": 64, "m_max": 0.5, "m_min": 0.2},
    )
    assert loss_spec(new.losses["rkd_distance"]) == (1.0, {})
    assert loss_spec({"T": 2.0}) == (1.0, {"T": 2.0})  # weight defaults to 1
    for bad, match in (
        ({"margin_distillation": {"m_maxx": 0.4}}, "m_maxx"),
        ({"margin_distillation": {"m_max": 0.1, "m_min": 0.3}}, "m_min"),
        ({"rkd": 1.0}, "unknown loss 'rkd'"),
        ({"cosine": {"weight": "heavy"}}, "weight"),
        ({}, "at least one"),
    ):
        with pytest.raises(ValueError, match=match):
            DistillConfig(losses=bad)
