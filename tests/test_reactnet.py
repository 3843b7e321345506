"""ReActNet's RSign and RPReLU as options of the binary layers, and their LCE export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from students import create_student
from students.layers import BinaryConv2d, RPReLU, RSign
from students.quicknet import QuickNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0)


def test_rsign_shifts_the_threshold_of_the_sign_and_of_the_twin() -> None:
    torch.manual_seed(0)
    layer = BinaryConv2d(32, 8, 1, rsign=True).eval()
    assert torch.equal(layer.rsign.beta, torch.zeros(32))  # starts as a plain sign
    with torch.no_grad():
        layer.rsign.beta.copy_(torch.randn(32) * 0.5)
    beta = layer.rsign.beta.view(1, -1, 1, 1)
    x = torch.randn(2, 32, 5, 5)
    w = _sign(layer.conv.weight)
    assert torch.allclose(layer(x), F.conv2d(_sign(x - beta), w), atol=1e-5)
    assert not torch.allclose(layer(x), F.conv2d(_sign(x), w), atol=1e-5)
    twin = BinaryConv2d(32, 8, 1, binary=False, rsign=True).eval()
    twin.load_state_dict(layer.state_dict())  # same names: rsign.beta, conv.weight
    expected = F.conv2d(F.hardtanh(x - beta), layer.conv.weight)
    assert torch.allclose(twin(x), expected, atol=1e-5)


def test_rsign_threshold_learns_through_the_ste() -> None:
    torch.manual_seed(0)
    layer = BinaryConv2d(32, 8, 3, rsign=True, ste="approx_sign").train()
    layer(torch.randn(2, 32, 6, 6) * 0.5).pow(2).sum().backward()
    grad = layer.rsign.beta.grad
    assert grad is not None and grad.abs().sum() > 0


def test_rprelu_is_a_shifted_prelu_that_loads_prelu_weights() -> None:
    torch.manual_seed(0)
    plain = nn.PReLU(16, init=0.1)
    r = RPReLU(16, init=0.25)
    x = torch.randn(2, 16, 4, 4)
    missing = r.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["gamma", "zeta"]
    assert torch.equal(r(x), plain(x))  # gamma = zeta = 0 at start
    with torch.no_grad():
        r.gamma.copy_(torch.randn(16))
        r.zeta.copy_(torch.randn(16))
    g, z = r.gamma.view(1, -1, 1, 1), r.zeta.view(1, -1, 1, 1)
    assert torch.allclose(r(x), plain(x - g) + z)
    assert RSign(8)(torch.ones(1, 8)).shape == (1, 8)  # any rank: (C,) parameters broadcast


@pytest.mark.parametrize(
    ("name", "args"),
    [("birealface", {"width": 32, "depths": [1, 1]}), ("quicknet_small", {})],
)
def test_student_options_default_off_and_twin_names(name: str, args: dict) -> None:
    torch.manual_seed(0)
    keys = set(create_student(name, **args).state_dict())
    # off by default: the state dict of existing checkpoints
    assert not {k for k in keys if k.rsplit(".", 1)[-1] in ("beta", "gamma", "zeta")}
    student = create_student(name, rsign=True, rprelu=True, **args).train()
    new = set(student.state_dict()) - keys
    n_convs = sum(isinstance(m, BinaryConv2d) for m in student.modules())
    assert sum(k.endswith("rsign.beta") for k in new) == n_convs
    # the only new tensors are those of RSign and RPReLU (QuickNet's ReLU gets a slope too)
    owners = {n for n, m in student.named_modules() if isinstance(m, (RSign, RPReLU))}
    assert any(isinstance(m, RPReLU) for m in student.modules())
    assert all(k.rsplit(".", 1)[0] in owners for k in new)
    y = student(torch.randn(2, 3, 112, 112))
    y.pow(2).sum().backward()
    assert all(m.rsign.beta.grad is not None for m in student.modules() if hasattr(m, "rsign"))
    twin = create_student(name, binary=False, rsign=True, rprelu=True, **args)
    twin.load_state_dict(student.state_dict())  # the float twin has the same parameters


def test_rsign_without_binary_activations_is_refused() -> None:
    with pytest.raises(ValueError, match="rsign"):
        create_student("birealface", width=32, depths=[0], rsign=True)
    with pytest.raises(ValueError, match="rsign"):
        QuickNet((32,), (0,), embedding_size=8, rsign=True)
    # a float twin is no such model: its layers stand for binary ones and keep beta
    twin = create_student("birealface", width=32, depths=[1], binary=False, rsign=True)
    assert any(k.endswith("rsign.beta") for k in twin.state_dict())
    create_student("birealface", width=32, depths=[0], rprelu=True)  # RPReLU needs no sign


def _randomise(model: nn.Module) -> None:
    """BN statistics and ReActNet shifts away from their neutral start, so the export is
    checked with thresholds that matter."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            for p in ("beta", "gamma", "zeta"):
                if isinstance(getattr(m, p, None), nn.Parameter):
                    getattr(m, p).copy_(torch.rand(getattr(m, p).shape, generator=g) * 0.4 - 0.2)


def _tiny(name: str, binary: bool) -> nn.Module:
    if name == "birealface":
        return create_student(
            name, width=32, depths=[2, 1], embedding_size=16, binary=binary, rsign=True, rprelu=True
        )
    return QuickNet((32, 64), (1, 1), 16, binary, rsign=True, rprelu=True, weight_clip=1.25)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["birealface", "quicknet"])
def test_rsign_and_rprelu_export_to_lce_binary_convs_with_parity(tmp_path, name: str) -> None:
    """RSign's Sub right before the sign does not break LCE's fusion: every binary conv
    becomes LceBconv2d, the Sub stays a float op in front of LceQuantize."""
    from export.runtime import TFLiteRunner
    from export.student_export import export_student
    from export.tflite import flatbuffer_ops, op_histogram

    torch.manual_seed(0)
    student = _tiny(name, True).eval()
    _randomise(student)
    twin = _tiny(name, False).eval()
    twin.load_state_dict(student.state_dict())
    probe = torch.randn(6, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    result = export_student(student, twin, probe, tmp_path)
    fb = Path(result.lce_tflite).read_bytes()
    ops = op_histogram(fb)
    n_convs = sum(isinstance(m, BinaryConv2d) for m in student.modules())
    assert result.metrics["export.bconv_coverage"] == 1.0 and result.float_layers == []
    assert ops["LceBconv2d"] == n_convs == ops["LceQuantize"]
    # every LceQuantize reads RSign's float Sub: the threshold was not dropped or folded
    listed = flatbuffer_ops(fb)
    producers = {out: op for op in listed for out in op.outputs}
    quantize = [op for op in listed if op.name == "LceQuantize"]
    assert {producers[op.inputs[0]].name for op in quantize} == {"SUB"}
    # QuickNet's RPReLU subtracts gamma straight after the binary conv: the lowering makes it
    # the conv's bias (LCE would fuse the 4-D constant as a bias its kernel refuses)
    folded = json.loads(Path(result.report).read_text())["lowering"]["folded_biases"]
    assert len(folded) == (2 if name == "quicknet" else 0)
    with torch.no_grad():
        ref, ref_float = student(probe).numpy(), twin(probe).numpy()
    lce = TFLiteRunner(fb, binary=True).embed(probe.numpy())
    np.testing.assert_allclose(lce, ref, rtol=1e-3, atol=1e-3)
    assert result.metrics["export.cosine_min"] > 0.9999
    assert result.metrics["export.float_cosine_min"] > 0.9999
    assert np.abs(ref - ref_float).max() > 1e-2  # the binary model really binarizes


class _ConvThenConstant(nn.Module):
    """A float stem, then a binary conv followed by an Add/Sub of a constant."""

    def __init__(self, op: str, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 1, bias=False)
        self.conv = BinaryConv2d(32, 16, 1)
        self.c = nn.Parameter(torch.randn(shape))
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.stem(x))
        return y - self.c if self.op == "sub" else self.c + y


@pytest.mark.parametrize(
    ("op", "shape", "folded"),
    [
        ("sub", (1, 16, 1, 1), True),  # RPReLU's x - gamma
        ("add", (16, 1, 1), True),
        ("sub", (112,), False),  # one value per column, not per channel: left alone
    ],
)
def test_lowering_folds_a_channel_constant_after_a_binary_conv_into_its_bias(
    op: str, shape: tuple[int, ...], folded: bool
) -> None:
    import onnxruntime as ort

    from export.lowering import lower_bipolar_quant
    from export.onnx_export import export_qonnx

    torch.manual_seed(0)
    model = _ConvThenConstant(op, shape).eval()
    lowered, report = lower_bipolar_quant(export_qonnx(model))
    ops = [n.op_type for n in lowered.graph.node]
    conv = [n for n in lowered.graph.node if n.op_type == "Conv"][-1]
    assert bool(report.folded_biases) == folded
    assert (len(conv.input) == 3) == folded  # the binary conv got a bias
    assert ("Sub" in ops or "Add" in ops) != folded
    sess = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    probe = torch.randn(2, 3, 112, 112)
    got = np.concatenate(
        [sess.run(None, {sess.get_inputs()[0].name: probe[i : i + 1].numpy()})[0] for i in (0, 1)]
    )
    with torch.no_grad():
        ref = model(probe).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
