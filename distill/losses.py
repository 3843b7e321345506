"""Distillation losses, registered by name (torchdistill-style) and combinable with weights.

A pipeline names its losses with weights and, optionally, hyper-parameters::

    losses: {cosine: 1.0, rkd_distance: {weight: 1.0}, margin_distillation: {weight: 1.0, s: 64}}

Every loss is a :class:`DistillLoss` and says what it needs: the teacher's embeddings
(``uses_teacher``), identity labels (``uses_labels``: only labelled images, label >= 0, reach
it; unlabelled images carry the label -1), class centres of the teacher (``uses_centres``)
and a bank of the teacher's embeddings of the training images (``uses_bank``), both given by
:meth:`DistillLoss.bind`. Losses without labels see every image of the batch.
A set of losses none of which uses the teacher is training without a teacher: the baseline.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill import features  # noqa: F401  (registers fitnet, attention_transfer)
from distill.base import DISTILL_LOSSES, DistillLoss, LossContext  # noqa: F401 (re-exported)
from faces.margins import MARGIN_HEADS, create_margin_head
from teachers.train import margin_loss


@DISTILL_LOSSES.register("cosine")
class CosineEmbeddingLoss(DistillLoss):
    """1 - cos(student, teacher) on embeddings, averaged over the batch."""

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: Any = None
    ) -> torch.Tensor:
        return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()


@DISTILL_LOSSES.register("l2")
class NormalisedL2Loss(DistillLoss):
    """Squared L2 distance between L2-normalised student and teacher embeddings."""

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: Any = None
    ) -> torch.Tensor:
        return (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(1).mean()


def _pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(N, N) Euclidean distances with an exact zero diagonal."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


@DISTILL_LOSSES.register("rkd_distance")
class RKDDistanceLoss(DistillLoss):
    """Distance-wise relational KD (Park et al. 2019, RKD-D).

    Pairwise distances of the batch's embeddings, each set divided by its mean over distinct
    pairs, compared with the Huber (smooth L1) loss. ``normalize``: L2-normalise embeddings
    first (face embeddings are compared by their angle).
    """

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def _distances(self, e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e, dim=1) if self.normalize else e
        d = _pairwise_distances(e)
        n = len(e)
        mean = d.sum() / max(1, n * (n - 1))
        return d / mean.clamp_min(1e-12)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: Any = None
    ) -> torch.Tensor:
        with torch.no_grad():
            t = self._distances(teacher)
        return F.smooth_l1_loss(self._distances(student), t)


@DISTILL_LOSSES.register("rkd_angle")
class RKDAngleLoss(DistillLoss):
    """Angle-wise relational KD (Park et al. 2019, RKD-A).

    For every triplet (i, j, k) the cosine of the angle at j between the embeddings of i and
    k, compared between student and teacher with the Huber loss. O(N^3) in the batch size.
    """

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def _angles(self, e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e, dim=1) if self.normalize else e
        diff = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # diff[j, i] = e_i - e_j
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: Any = None
    ) -> torch.Tensor:
        with torch.no_grad():
            t = self._angles(teacher)
        return F.smooth_l1_loss(self._angles(student), t)


@DISTILL_LOSSES.register("similarity_preserving")
class SimilarityPreservingLoss(DistillLoss):
    """Similarity-preserving KD (Tung & Mori 2019) on embeddings.

    G = row-L2-normalised F F^T (the batch's similarity matrix) of student and teacher;
    loss = ||G_t - G_s||_F^2 / b^2.
    """

    @staticmethod
    def _gram(e: torch.Tensor) -> torch.Tensor:
        return F.normalize(e @ e.t(), dim=1)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: Any = None
    ) -> torch.Tensor:
        b = len(student)
        with torch.no_grad():
            g_t = self._gram(teacher.float())
        return (g_t - self._gram(student)).pow(2).sum() / (b * b)


@DISTILL_LOSSES.register("seed")
class SimilarityDistributionLoss(DistillLoss):
    """Similarity-distribution distillation over a bank of teacher embeddings (SEED).

    Fang et al. 2021 ("SEED: Self-supervised Distillation for Visual Representation"): the
    student's and the teacher's embeddings of a face are each compared, by cosine, with a
    bank of teacher embeddings (here: every training image and its mirror, labelled or not,
    ``LossContext.bank``); the loss is the cross-entropy between the teacher's softmax over
    the bank (temperature ``T_t``) and the student's (``T_s``), reported as the KL divergence
    (0 when the student reproduces the teacher's similarities at equal temperatures). The
    face's own teacher embedding is in the bank, so the target peaks there and spreads over
    the faces the teacher finds similar: the student must place each face nearer its own
    teacher embedding than to the thousands of other faces, the hard ones (look-alikes)
    weighing most, which is what verification needs. Needs no labels. ``bank_size`` > 0
    keeps a fixed random subset
    of the bank (seeded) to bound memory and compute: O(batch x bank x D) per step.
    """

    uses_bank = True

    def __init__(
        self,
        T_s: float = 0.05,  # noqa: N803 - the paper's temperatures
        T_t: float = 0.05,  # noqa: N803
        bank_size: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if T_s <= 0 or T_t <= 0:
            raise ValueError(f"temperatures must be positive, got T_s={T_s}, T_t={T_t}")
        if bank_size < 0:
            raise ValueError(f"bank_size must be >= 0 (0: the whole bank), got {bank_size}")
        self.T_s, self.T_t, self.bank_size, self.seed = T_s, T_t, int(bank_size), seed

    def bind(self, context: LossContext) -> None:
        if context.bank is None or len(context.bank) < 2:
            raise ValueError("the seed loss needs a bank of teacher embeddings (LossContext.bank)")
        bank = F.normalize(context.bank.detach().float().reshape(-1, context.bank.shape[-1]), dim=1)
        if 0 < self.bank_size < len(bank):
            g = torch.Generator().manual_seed(self.seed)
            bank = bank[torch.randperm(len(bank), generator=g)[: self.bank_size]]
        self.register_buffer("bank", bank.contiguous(), persistent=False)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: Any = None
    ) -> torch.Tensor:
        bank = self.bank.to(student.dtype)
        with torch.no_grad():
            p_t = F.softmax(F.normalize(teacher.to(bank.dtype), dim=1) @ bank.t() / self.T_t, 1)
        log_p_s = F.log_softmax(F.normalize(student, dim=1) @ bank.t() / self.T_s, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="batchmean")


class _CentresMixin:
    """Frozen (or trainable) class centres taken from the teacher."""

    def _set_centres(self, context: LossContext, trainable: bool) -> None:
        if context.centres is None:
            raise ValueError(
                f"the {type(self).__name__} needs the teacher's class centres (labelled data)"
            )
        centres = F.normalize(context.centres.detach().float().clone(), dim=1)
        if trainable:
            self.centres = nn.Parameter(centres)
        else:
            self.register_buffer("centres", centres)


@DISTILL_LOSSES.register("logit")
class LogitDistillationLoss(_CentresMixin, DistillLoss):
    """Logit KD (Hinton et al. 2015) through the teacher's class-centre head.

    Student and teacher logits are ``s * cos(embedding, centre)`` against the same frozen
    centres (the teacher's margin head, or the normalised mean teacher embedding of each
    training identity); loss = T^2 * KL(softmax(teacher / T) || softmax(student / T)). Needs
    no labels: unlabelled faces get the teacher's soft labels too.
    """

    uses_centres = True

    def __init__(self, T: float = 4.0, s: float = 64.0) -> None:  # noqa: N803 - the paper's T
        super().__init__()
        if T <= 0 or s <= 0:
            raise ValueError(f"T and s must be positive, got T={T}, s={s}")
        self.T, self.s = T, s

    def bind(self, context: LossContext) -> None:
        self._set_centres(context, trainable=False)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: Any = None
    ) -> torch.Tensor:
        w = self.centres
        scale = self.s / self.T
        with torch.no_grad():
            p_t = F.softmax(F.linear(F.normalize(teacher.float(), dim=1), w) * scale, dim=1)
        log_p_s = F.log_softmax(F.linear(F.normalize(student, dim=1), w) * scale, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="batchmean") * self.T**2


@DISTILL_LOSSES.register("margin_distillation")
class MarginDistillationLoss(_CentresMixin, DistillLoss):
    """MarginDistillation (Svitov & Alyamkin 2020, arXiv:2003.02586).

    The student is trained with an ArcFace-style softmax whose class centres are the
    teacher's (copied, and by default frozen: ``train_centres``), and whose angular margin
    depends on how close the teacher put the face to its class centre. The rule follows the
    authors' public code (github.com/david-svitov/margindistillation, ``train/train.py``,
    loss ``margin_distillation``): for a face of class y with teacher embedding t,

        d = cos(t, c_y),   m = m_min + (m_max - m_min) * d / max_batch(d),

    so faces the teacher holds tight to their centre get a large margin and faces it finds
    hard (far from the centre, often label noise) a small one; then the logit of the true
    class is ``s * cos(theta + m)``. Defaults s=64, m_max=0.5, m_min=0.2 as theirs.

    ``per: class`` uses one margin per identity instead: d is the class's spread (the mean
    cosine of the teacher's embeddings of its training images to the centre), normalised by
    the largest over classes (the tighter the class, the larger its margin). Differences to
    the authors' code: margins are clamped to [m_min, m_max] (their formula goes below m_min
    for a face on the far side of its centre), and past theta + m > pi the logit falls back to
    the linear penalty of the ArcFace heads in ``faces.margins``.
    """

    uses_labels = True
    uses_centres = True

    def __init__(
        self,
        s: float = 64.0,
        m_max: float = 0.5,
        m_min: float = 0.2,
        per: str = "sample",
        train_centres: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= m_min <= m_max < math.pi / 2:
            raise ValueError(f"need 0 <= m_min <= m_max < pi/2, got m_min={m_min}, m_max={m_max}")
        if per not in ("sample", "class"):
            raise ValueError(f"per must be 'sample' or 'class', got {per!r}")
        self.s, self.m_max, self.m_min, self.per = s, m_max, m_min, per
        self.train_centres = train_centres

    def bind(self, context: LossContext) -> None:
        self._set_centres(context, trainable=self.train_centres)
        spread = context.spread
        if spread is None:
            spread = torch.ones(context.num_classes)
        self.register_buffer("class_margins", self._scale(spread.float()))

    def _scale(self, d: torch.Tensor) -> torch.Tensor:
        top = d.max().clamp_min(1e-6)
        return (self.m_min + (self.m_max - self.m_min) * d / top).clamp(self.m_min, self.m_max)

    def margins(self, teacher: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """The angular margin of every face of the batch, in [m_min, m_max]."""
        if self.per == "class" or teacher is None:
            return self.class_margins[labels]
        with torch.no_grad():
            c = F.normalize(self.centres.detach(), dim=1)[labels]
            d = (F.normalize(teacher.float(), dim=1) * c).sum(1)
            return self._scale(d)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor
    ) -> torch.Tensor:
        m = self.margins(teacher, labels)
        cos = F.linear(F.normalize(student, dim=1), F.normalize(self.centres, dim=1))
        cos = cos.clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None]).squeeze(1)
        theta = torch.acos(target)
        marked = torch.where(theta + m < math.pi, torch.cos(theta + m), target - m * torch.sin(m))
        logits = cos.scatter(1, labels[:, None], marked[:, None]) * self.s
        return F.cross_entropy(logits, labels)


class MarginHeadLoss(DistillLoss):
    """Training without a teacher: a margin head (ArcFace, CosFace, combined) on the student.

    The head is built by ``faces.margins.create_margin_head`` and trained with the student;
    the loss is the teacher's own (``teachers.train.margin_loss``). Its hyper-parameters are
    those of the head (``s``, ``m`` or ``m1/m2/m3``, ``sample_rate`` for PartialFC).
    """

    uses_teacher = False
    uses_labels = True

    def __init__(self, head: str, **params: float) -> None:
        super().__init__()
        accepted = set(inspect.signature(MARGIN_HEADS.get(head)).parameters) - {
            "embedding_size",
            "num_classes",
        }
        unknown = set(params) - accepted - {"sample_rate"}
        if unknown:
            raise TypeError(
                f"{head} takes {', '.join(sorted(accepted | {'sample_rate'}))}, "
                f"not {', '.join(sorted(unknown))}"
            )
        self.head_name, self.params = head, params

    def bind(self, context: LossContext) -> None:
        if context.num_classes < 2:
            raise ValueError(f"the {self.head_name} loss needs labelled training identities")
        self.head = create_margin_head(
            self.head_name, context.embedding_size, context.num_classes, **self.params
        )

    def forward(self, student: torch.Tensor, teacher: Any, labels: torch.Tensor) -> torch.Tensor:
        return margin_loss(self.head, student, labels)[0]


for _name in MARGIN_HEADS.names():

    def _factory(_head: str = _name, **params: float) -> MarginHeadLoss:
        return MarginHeadLoss(_head, **params)

    _factory.__doc__ = f"Training without a teacher: a {_name} head on the student."
    DISTILL_LOSSES.register(_name)(_factory)


# -- configuration -------------------------------------------------------------------------


def loss_spec(spec: float | dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """``1.0`` or ``{weight: 1.0, **params}`` -> (weight, params)."""
    if isinstance(spec, dict):
        params = dict(spec)
        weight = params.pop("weight", 1.0)
    else:
        weight, params = spec, {}
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"weight must be a number, got {weight!r}")
    return float(weight), params


def create_loss(name: str, params: dict[str, Any]) -> DistillLoss:
    """The registered loss ``name`` with its hyper-parameters (a clear error otherwise)."""
    try:
        return DISTILL_LOSSES.create(name, **params)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: bad parameters {params}: {exc}") from None


def loss_classes(terms: dict[str, Any]) -> dict[str, type]:
    """The loss classes of a ``losses`` mapping, without building them."""
    out = {}
    for name in terms:
        factory = DISTILL_LOSSES.get(name)
        out[name] = factory if isinstance(factory, type) else MarginHeadLoss
    return out


def uses_teacher(terms: dict[str, Any]) -> bool:
    """Whether any loss needs the teacher (False: training without a teacher)."""
    return any(c.uses_teacher for c in loss_classes(terms).values())


def uses_centres(terms: dict[str, Any]) -> bool:
    """Whether any loss needs the teacher's class centres."""
    return any(c.uses_centres for c in loss_classes(terms).values())


def uses_bank(terms: dict[str, Any]) -> bool:
    """Whether any loss needs the bank of the teacher's embeddings of the training images."""
    return any(c.uses_bank for c in loss_classes(terms).values())


def label_free(terms: dict[str, Any]) -> bool:
    """Whether some loss learns from unlabelled images."""
    return any(not c.uses_labels for c in loss_classes(terms).values())


def method_name(terms: dict[str, Any], unlabelled: bool = False) -> str:
    """The distillation method of a ``losses`` mapping, as tagged in MLflow.

    ``none`` when no loss uses the teacher (training without a teacher), else the loss
    names joined by ``+``, with ``+unlabelled`` when unlabelled images are distilled too.
    """
    if not uses_teacher(terms):
        return "none"
    name = "+".join(sorted(terms))
    return name + "+unlabelled" if unlabelled and label_free(terms) else name


class WeightedLoss(nn.Module):
    """sum_i w_i * loss_i over registered losses; returns (total, parts).

    ``terms``: ``{name: weight}`` or ``{name: {weight: w, **hyper-parameters}}``. Losses with
    ``uses_labels`` see only the labelled rows of the batch (label >= 0); with none in the
    batch they contribute an exact zero that still reaches their parameters (DDP needs every
    parameter in the graph).
    """

    def __init__(self, terms: dict[str, Any], context: LossContext | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("at least one distillation loss is needed")
        self.weights: dict[str, float] = {}
        losses = {}
        for name, spec in terms.items():
            weight, params = loss_spec(spec)
            self.weights[name] = weight
            losses[name] = create_loss(name, params)
        self.losses = nn.ModuleDict(losses)
        for loss in self.losses.values():
            if context is not None:
                loss.bind(context)
            elif loss.uses_centres or loss.uses_labels and not loss.uses_teacher:
                raise ValueError(f"{type(loss).__name__} needs a LossContext (labelled classes)")
            elif loss.uses_bank:
                raise ValueError(f"{type(loss).__name__} needs a LossContext with a bank")
        self.uses_teacher = any(loss.uses_teacher for loss in self.losses.values())

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {}
        labelled = None if labels is None else labels >= 0
        for name, loss in self.losses.items():
            if not loss.uses_labels:
                parts[name] = loss(student, teacher, labels)
            elif labelled is None or not bool(labelled.any()):
                zero = student.sum() * 0
                for p in loss.parameters():
                    zero = zero + p.sum() * 0
                parts[name] = zero
            else:
                t = teacher[labelled] if teacher is not None else None
                parts[name] = loss(student[labelled], t, labels[labelled])
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts
