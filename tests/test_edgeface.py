"""EdgeFace teachers: published sizes, the authors' checkpoint layout, LoRaLin rank rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from teachers import create_teacher, list_teachers
from teachers.checkpoint import CheckpointError, load_checkpoint_into
from teachers.edgeface import LoRaLin, lowrank_rank

# (params in M, MFLOPs at 112x112) from the EdgeFace paper (George et al., T-BIOM 2024)
PUBLISHED = {
    "edgeface_xxs": (1.24, 94.72),
    "edgeface_xs_gamma_06": (1.77, 154.00),
    "edgeface_s_gamma_05": (3.65, 306.12),
    "edgeface_base": (18.23, 1398.83),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_flops_match_the_paper_within_3_percent(name: str) -> None:
    model = create_teacher(name).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(torch.zeros(1, 3, 112, 112))
    flops = counter.get_total_flops() / 1e6
    assert out.shape == (1, 512)
    want_params, want_flops = PUBLISHED[name]
    assert abs(params / want_params - 1) < 0.03, (params, want_params)
    assert abs(flops / want_flops - 1) < 0.03, (flops, want_flops)


def test_registered_and_listed() -> None:
    assert set(PUBLISHED) <= set(list_teachers("edgeface_*"))


def test_rank_rule() -> None:
    assert lowrank_rank(88, 352, 0.6) == 52
    assert lowrank_rank(3, 100, 0.5) == 2  # never below 2


class _AuthorsLoRaLin(nn.Module):
    """The layout of the authors' released ``LoRaLin`` (linear1 without bias, linear2)."""

    def __init__(self, i: int, o: int, r: int, bias: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(i, r, bias=False)
        self.linear2 = nn.Linear(r, o, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def _authors_model(backbone: str, gamma: float) -> nn.Module:
    """Built independently the way the released code does: timm model under ``model.``,
    classifier reset to 512, then every Linear not named *head* swapped recursively."""

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Linear) and "head" not in name:
                rank = max(2, int(min(child.in_features, child.out_features) * gamma))
                setattr(
                    module,
                    name,
                    _AuthorsLoRaLin(
                        child.in_features, child.out_features, rank, child.bias is not None
                    ),
                )
            else:
                swap(child)

    wrapper = nn.Module()
    wrapper.model = timm.create_model(backbone)
    wrapper.model.reset_classifier(512)
    swap(wrapper.model)
    return wrapper


def test_loads_a_checkpoint_in_the_authors_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    authors = _authors_model("edgenext_x_small", 0.6)
    ckpt = tmp_path / "edgeface_xs_gamma_06.pt"
    torch.save(authors.state_dict(), ckpt)  # the released files are plain state dicts
    ours = create_teacher("edgeface_xs_gamma_06")
    load_checkpoint_into(ours, ckpt)
    assert isinstance(ours.model.head.fc, LoRaLin)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ours.eval()
        authors.eval()
        torch.testing.assert_close(ours(x), authors.model(x))
    # a checkpoint of another variant is refused with the keys that differ
    torch.save(_authors_model("edgenext_x_small", 0.5).state_dict(), ckpt)
    with pytest.raises(CheckpointError, match="size|shape"):
        load_checkpoint_into(create_teacher("edgeface_xs_gamma_06"), ckpt)
