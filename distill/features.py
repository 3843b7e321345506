"""Feature distillation at intermediate layers: FitNets and attention transfer.

A feature loss names pairs of layers, ``layers: {student_layer: teacher_layer}`` (names of
``model.named_modules()``), and compares their output maps in every training step, so the
teacher runs in the step beside the student (its embeddings may still come from the cache).
Maps of different sizes are compared at the teacher's size (the student's map is average-pooled
to it: MobileFaceNet's 112x96 crop gives 28x24 maps where a 112x112 student has 28x28).

* ``fitnet`` (Romero et al. 2015): a 1x1 convolution (with BatchNorm) maps the student's
  channels to the teacher's, then the mean squared error between the two maps, each
  normalised per image (the teacher's scale differs from layer to layer);
* ``attention_transfer`` (Zagoruyko & Komodakis 2017): the spatial attention map
  ``mean_c |f|^p``, L2-normalised per image, compared with the squared distance; channels need
  not match, so no adapter. Both losses average their pairs.

The layer outputs are taken by forward hooks (:meth:`FeatureLoss.attach`); a name that a model
does not have is refused with the layers it does have and their output shapes.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from distill.base import DISTILL_LOSSES, DistillLoss

INPUT_SIZE = (112, 112)


def layer_shapes(model: nn.Module, input_size: tuple[int, int] = INPUT_SIZE) -> dict[str, tuple]:
    """The output shape of every named module that gives a 4-d map, in forward order."""
    shapes: dict[str, tuple] = {}

    def keep(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if torch.is_tensor(out) and out.dim() == 4 and name not in shapes:
                shapes[name] = tuple(out.shape[1:])

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model.eval()(torch.zeros(2, 3, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def _available(shapes: dict[str, tuple], limit: int = 40) -> str:
    items = [f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items()]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class FeatureLayerError(ValueError):
    """A feature loss names a layer that the student or teacher does not have."""


class FeatureLoss(DistillLoss):
    """Base of the feature losses: pairs of layers, hooks that keep their outputs."""

    registered_name: ClassVar[str] = "feature"  # the loss key named in errors

    def __init__(self, layers: dict[str, str] | list[list[str]] | None = None) -> None:
        super().__init__()
        pairs = list(layers.items()) if isinstance(layers, dict) else layers
        if not pairs or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p)
            for p in pairs
        ):
            raise ValueError(
                f"{type(self).__name__} needs layers: {{student_layer: teacher_layer, ...}} "
                f"(names of model.named_modules()), got {layers!r}"
            )
        self.pairs = [(str(s), str(t)) for s, t in pairs]
        self._maps: dict[str, dict[int, torch.Tensor]] = {"student": {}, "teacher": {}}
        self._handles: list[Any] = []
        self.teacher_shapes: list[tuple] = []
        self.student_shapes: list[tuple] = []

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        """Check the layer names, build the adapters and hook the layers' outputs."""
        self.release()
        s_shapes, t_shapes = layer_shapes(student), layer_shapes(teacher)
        for role, shapes, names in (
            ("student", s_shapes, [s for s, _ in self.pairs]),
            ("teacher", t_shapes, [t for _, t in self.pairs]),
        ):
            for name in names:
                if name not in shapes:
                    raise FeatureLayerError(
                        f"distill.losses.{self.registered_name}.layers: the {role} has no layer "
                        f"{name!r} with a feature map; its layers: {_available(shapes)}"
                    )
        self.student_shapes = [s_shapes[s] for s, _ in self.pairs]
        self.teacher_shapes = [t_shapes[t] for _, t in self.pairs]
        self.build(self.student_shapes, self.teacher_shapes)
        modules = {"student": dict(student.named_modules())}
        modules["teacher"] = dict(teacher.named_modules())
        for i, (s, t) in enumerate(self.pairs):
            for role, name in (("student", s), ("teacher", t)):
                self._handles.append(
                    modules[role][name].register_forward_hook(self._keeper(role, i))
                )

    def _keeper(self, role: str, i: int) -> Any:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            self._maps[role][i] = out

        return hook

    def release(self) -> None:
        """Remove the hooks (after training: exported models carry none)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._maps = {"student": {}, "teacher": {}}

    def build(self, student_shapes: list[tuple], teacher_shapes: list[tuple]) -> None:
        """Build what depends on the maps' shapes (adapters)."""

    @abstractmethod
    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Layer pair ``i``: the student map ``s`` (teacher-sized) against the teacher's ``t``."""

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None
    ) -> torch.Tensor:
        if not self._handles:
            raise RuntimeError(f"{type(self).__name__} is not attached to its models")
        total = student.new_zeros(())
        for i in range(len(self.pairs)):
            s, t = self._maps["student"].get(i), self._maps["teacher"].get(i)
            if s is None or t is None or s.shape[0] != t.shape[0]:
                raise RuntimeError(
                    f"{type(self).__name__}: no {self.pairs[i]} maps of this batch (the teacher "
                    "must run on the batch in the training step)"
                )
            s = s.float()
            t = t.detach().float()
            if s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[-2:])
            total = total + self.pair_loss(i, s, t)
        return total / len(self.pairs)


@DISTILL_LOSSES.register("fitnet")
class FitNetLoss(FeatureLoss):
    """FitNets hints: 1x1 conv + BN adapters from the student's channels to the teacher's, MSE
    between per-image normalised maps."""

    registered_name = "fitnet"

    def build(self, student_shapes: list[tuple], teacher_shapes: list[tuple]) -> None:
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s[0], t[0], 1, bias=False), nn.BatchNorm2d(t[0]))
            for s, t in zip(student_shapes, teacher_shapes, strict=True)
        )

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.adapters[i].to(s.device)(s)
        a = F.normalize(a.flatten(1), dim=1)
        t = F.normalize(t.flatten(1), dim=1)
        return (a - t).pow(2).sum(1).mean()


@DISTILL_LOSSES.register("attention_transfer")
class AttentionTransferLoss(FeatureLoss):
    """Attention transfer: L2 distance of the normalised maps ``mean_c |f|^p`` (p = 2)."""

    registered_name = "attention_transfer"

    def __init__(self, layers: dict[str, str] | list[list[str]] | None = None, p: float = 2.0):
        super().__init__(layers)
        if p <= 0:
            raise ValueError(f"attention_transfer: p must be > 0, got {p}")
        self.p = p

    def _attention(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.abs().pow(self.p).mean(1).flatten(1), dim=1)

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self._attention(s) - self._attention(t)).pow(2).sum(1).mean()


def feature_losses(losses: nn.Module) -> list[FeatureLoss]:
    """The feature losses among a WeightedLoss's terms."""
    return [m for m in losses.modules() if isinstance(m, FeatureLoss)]
