"""The student zoo: every student trains at 112x112; binary layers, STEs and BNN schedules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from students import create_student, list_students
from students.layers import BinaryConv2d, set_binarization
from students.schedules import (
    BinarizationSchedule,
    binarization_at,
    bnn_optimizer,
    lr_factor,
)

ZOO = [
    "binaryfacenet",
    "binaryfacenet_lce",
    "quicknet_small",
    "quicknet",
    "quicknet_small_attn",
    "binarydensenet28",
    "binarydensenet37",
    "binarydensenet45",
    "mobilefacenet_1bit",
]


def test_the_zoo_is_registered() -> None:
    assert set(ZOO) <= set(list_students())


@pytest.mark.parametrize("name", ZOO)
def test_student_forward_backward_at_112(name: str) -> None:
    torch.manual_seed(0)
    student = create_student(name).train()
    x = torch.randn(2, 3, 112, 112)
    y = student(x)
    assert y.shape == (2, student.embedding_size) and torch.isfinite(y).all()
    y.pow(2).sum().backward()
    binary = [m for m in student.modules() if isinstance(m, BinaryConv2d)]
    assert binary and all(m.conv.weight.grad is not None for m in binary)
    assert all(torch.isfinite(m.conv.weight.grad).all() for m in binary)
    # the float twin has the same parameters, so the export can load one into the other
    twin = create_student(name, binary=False)
    twin.load_state_dict(student.state_dict())


def test_binaryfacenet_variants_differ_only_in_grouping() -> None:
    orig, lce = create_student("binaryfacenet"), create_student("binaryfacenet_lce")
    g_orig = orig.se_stage[3].conv.conv
    g_lce = lce.se_stage[3].conv.conv
    assert g_orig.in_channels // g_orig.groups == 16  # not fusable by LCE
    assert g_lce.in_channels // g_lce.groups == 32
    assert orig.embedding_size == 128


def test_grouped_binary_conv_below_32_channels_needs_opt_in() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        BinaryConv2d(64, 64, 3, groups=4)
    BinaryConv2d(64, 64, 3, groups=4, lce_groups=False)


def _input_grad(ste: str, x: torch.Tensor) -> torch.Tensor:
    layer = BinaryConv2d(32, 32, 1, ste=ste).train()
    x = x.clone().requires_grad_(True)
    act = layer.act
    act.train()
    act(x).sum().backward()
    return x.grad


@pytest.mark.parametrize(
    ("ste", "expected"),
    [
        ("clipped", [1.0, 1.0, 0.0]),  # hardtanh window
        ("identity", [1.0, 1.0, 1.0]),
        ("approx_sign", [2.0, 1.0, 0.0]),  # 2 - 2|x| on |x| < 1
        ("swish_sign", [5.0, -0.0846, None]),  # beta at 0, overshoots past ~0.48
    ],
)
def test_straight_through_estimators(ste: str, expected: list[float | None]) -> None:
    x = torch.zeros(1, 32, 1, 3)
    x[..., 1], x[..., 2] = 0.5, 2.0
    grad = _input_grad(ste, x)[0, 0, 0]
    for g, e in zip(grad.tolist(), expected, strict=True):
        if e is not None:
            assert g == pytest.approx(e, rel=1e-3)
    if ste == "swish_sign":
        assert abs(grad[2]) < 0.01


def test_every_ste_gives_the_same_forward() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 5)
    outs = []
    for ste in ("clipped", "identity", "approx_sign", "swish_sign"):
        torch.manual_seed(1)
        outs.append(BinaryConv2d(32, 16, 3, ste=ste).train()(x))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_latent_weights_are_clipped_in_training() -> None:
    layer = BinaryConv2d(32, 32, 3, weight_clip=1.25).train()
    with torch.no_grad():
        layer.conv.weight.fill_(3.0)
        layer.conv.weight[0] = -4.0
    layer(torch.randn(1, 32, 4, 4))
    assert float(layer.conv.weight.max()) == pytest.approx(1.25)
    assert float(layer.conv.weight.min()) == pytest.approx(-1.25)
    unclipped = BinaryConv2d(32, 32, 3, weight_clip=None).train()
    with torch.no_grad():
        unclipped.conv.weight.fill_(3.0)
    unclipped(torch.randn(1, 32, 4, 4))
    assert float(unclipped.conv.weight.max()) == pytest.approx(3.0)


def test_mean_abs_weight_scales() -> None:
    torch.manual_seed(0)
    for scale, per_channel in (("mean_abs", False), ("mean_abs_channel", True)):
        layer = BinaryConv2d(32, 8, 3, weight_scale=scale)
        w = layer.conv.weight.detach()
        q = layer.conv.quant_weight().value.detach()
        dims = (1, 2, 3) if per_channel else (0, 1, 2, 3)
        expected = w.abs().mean(dim=dims, keepdim=True)
        assert torch.allclose(q, torch.where(w >= 0, 1.0, -1.0) * expected, atol=1e-6)


def test_multi_stage_switches() -> None:
    torch.manual_seed(0)
    layer = BinaryConv2d(32, 8, 3, pad_value=0.0)
    x = torch.randn(1, 32, 6, 6)
    set_binarization(layer, activations=False, weights=False)
    w = layer.conv.weight
    assert torch.allclose(layer(x), F.conv2d(F.hardtanh(x), w, padding=1))
    set_binarization(layer, activations=True, weights=False)
    assert torch.allclose(layer(x), F.conv2d(torch.where(x >= 0, 1.0, -1.0), w, padding=1))
    set_binarization(layer, activations=True, weights=True)
    binary_w = torch.where(w >= 0, 1.0, -1.0)
    expected = F.conv2d(torch.where(x >= 0, 1.0, -1.0), binary_w, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_binarization_schedule_follows_the_epoch() -> None:
    stages = [binarization_at(e, float_epochs=2, binary_activation_epochs=1) for e in range(5)]
    assert stages == [(False, False), (False, False), (True, False), (True, True), (True, True)]
    student = create_student("birealface", width=32, depths=[1])

    class _Trainer:
        current_epoch = 2

    BinarizationSchedule(2, 1).on_train_epoch_start(_Trainer(), student)
    conv = next(m for m in student.modules() if isinstance(m, BinaryConv2d))
    assert conv.binarize_activations and not conv.binarize_weights
    BinarizationSchedule(2, 1).on_train_end(_Trainer(), student)
    assert conv.binarize_activations and conv.binarize_weights


def test_learning_rate_schedules() -> None:
    assert lr_factor(0, 100, "linear") == 1.0
    assert lr_factor(50, 100, "linear") == pytest.approx(0.5)
    assert lr_factor(100, 100, "linear") == 0.0
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(0, 100, "linear", warmup=10) == pytest.approx(0.1)
    assert lr_factor(10, 100, "linear", warmup=10) == 1.0
    assert lr_factor(77, 100, "constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(1, 10, "step")
    p = torch.nn.Parameter(torch.zeros(3))
    setup = bnn_optimizer([p], 10, 1e-3, "adam", "linear")
    assert isinstance(setup["optimizer"], torch.optim.Adam)
    sched = setup["lr_scheduler"]["scheduler"]
    for _ in range(5):
        setup["optimizer"].step()
        sched.step()
    assert setup["optimizer"].param_groups[0]["lr"] == pytest.approx(5e-4)


def test_distill_config_rejects_a_schedule_without_binary_epochs() -> None:
    from pipelines.core.config import ConfigError, validate_raw

    train = {"epochs": 3, "float_epochs": 2, "binary_activation_epochs": 1}
    raw = {"pipeline": {"name": "x"}, "distill": {"train": train}}
    with pytest.raises(ConfigError, match="no fully binary epoch"):
        validate_raw(raw, "x.yaml")
    train["epochs"] = 4
    assert validate_raw(raw, "x.yaml").distill.train.binary_activation_epochs == 1


def test_additive_attention_is_linear_in_tokens_and_residual() -> None:
    from students.attention import BinaryAdditiveAttention

    torch.manual_seed(0)
    block = BinaryAdditiveAttention(32).eval()
    for size in (3, 7):
        x = torch.randn(2, 32, size, size)
        assert block(x).shape == x.shape
    projections = [m for m in block.modules() if isinstance(m, BinaryConv2d)]
    assert len(projections) == 4 and all(p.conv.kernel_size == (1, 1) for p in projections)
    with torch.no_grad():  # the block is x + BN(...): a zero BN scale leaves x unchanged
        block.bn.weight.zero_()
        block.bn.bias.zero_()
    x = torch.randn(1, 32, 5, 5)
    assert torch.allclose(block(x), x)


@pytest.mark.slow
@pytest.mark.parametrize("converter", ["onnx2tf", "onnx-tf"])
def test_attention_projections_become_lce_binary_convs(tmp_path, converter: str) -> None:
    from torch import nn

    from export.student_export import export_student
    from students.attention import BinaryAdditiveAttention
    from students.layers import SamePadConv2d

    class Tiny(nn.Module):
        def __init__(self, binary: bool = True) -> None:
            super().__init__()
            self.stem = nn.Sequential(SamePadConv2d(3, 32, 3, 2), nn.BatchNorm2d(32))
            self.attn = BinaryAdditiveAttention(32, binary=binary)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(self.stem(x)))

    torch.manual_seed(0)
    student, twin = Tiny().eval(), Tiny(binary=False).eval()
    with torch.no_grad():  # the attention branch, not the residual, dominates the output
        student.attn.bn.weight.fill_(20.0)
    twin.load_state_dict(student.state_dict())
    result = export_student(student, twin, torch.randn(4, 3, 112, 112), tmp_path, converter)
    assert result.metrics["export.bconv_coverage"] == 1.0
    assert result.metrics["export.lce_bconv_ops"] == 4
    assert result.metrics["export.cosine_min"] > 0.99
