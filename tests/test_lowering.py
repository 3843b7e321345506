"""The BipolarQuant lowering pass on tiny graphs: op types and numerical parity."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from export.lowering import LoweringError, lower_bipolar_quant
from export.onnx_export import export_qonnx
from students.layers import BinaryConv2d, SamePadConv2d


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class Tiny(nn.Module):
    def __init__(self, pad_value: float = 1.0) -> None:
        super().__init__()
        self.stem = SamePadConv2d(3, 32, 3, 2)
        self.b1 = BinaryConv2d(32, 32, 3, pad_value=pad_value)
        self.bn = nn.BatchNorm2d(32)
        self.b2 = BinaryConv2d(32, 64, 1)
        self.grouped = BinaryConv2d(64, 64, 3, groups=2, pad_value=pad_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.bn(self.b1(x))
        return self.grouped(self.b2(x)).mean((2, 3))


@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_lowering_removes_bipolar_quant_and_matches_pytorch(pad_value: float) -> None:
    torch.manual_seed(0)
    model = Tiny(pad_value).eval()
    qonnx = export_qonnx(model)
    assert sum(n.op_type == "BipolarQuant" for n in qonnx.graph.node) == 6  # 3 weights, 3 acts
    lowered, report = lower_bipolar_quant(qonnx)
    ops = [n.op_type for n in lowered.graph.node]
    assert "BipolarQuant" not in ops
    assert ops.count("Where") == 3 and ops.count("GreaterOrEqual") == 3
    assert len(report.binary_convs) == 3 and not report.warnings
    assert all(o.domain in ("", "ai.onnx") for o in lowered.opset_import)
    # every binary conv's filter is +-1 constant
    inits = {t.name: numpy_helper.to_array(t) for t in lowered.graph.initializer}
    for node in lowered.graph.node:
        if node.op_type == "Conv" and node.name in report.binary_convs:
            assert set(np.unique(np.abs(inits[node.input[1]]))) == {1.0}
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ref = model(x).numpy()
    got = np.concatenate([_run(lowered, x[i : i + 1].numpy()) for i in range(2)])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _bipolar_graph(act_scale: float, consumer: str) -> onnx.ModelProto:
    """x -> BipolarQuant(scale) -> Conv(BipolarQuant(W)) or Relu, built by hand."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(act_scale, np.float32), "s_act"),
        numpy_helper.from_array(np.array(0.5, np.float32), "s_w"),
        numpy_helper.from_array(w, "w"),
    ]
    nodes = [
        helper.make_node("BipolarQuant", ["x", "s_act"], ["xq"], domain="qonnx.custom_op.general"),
        helper.make_node("BipolarQuant", ["w", "s_w"], ["wq"], domain="qonnx.custom_op.general"),
    ]
    if consumer == "conv":
        nodes.append(helper.make_node("Conv", ["xq", "wq"], ["y"], pads=[1, 1, 1, 1]))
        out_shape = [1, 4, 8, 8]
    else:
        nodes.append(helper.make_node("Relu", ["xq"], ["y"]))
        out_shape = [1, 3, 8, 8]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid("qonnx.custom_op.general", 1),
        ],
    )


def test_activation_scale_is_folded_into_the_conv_filter() -> None:
    lowered, report = lower_bipolar_quant(_bipolar_graph(0.25, "conv"))
    assert report.folded_scales == ["xq"] and not report.kept_scales
    assert "Mul" not in [n.op_type for n in lowered.graph.node]
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = numpy_helper.to_array(
        next(t for t in _bipolar_graph(0.25, "conv").graph.initializer if t.name == "w")
    )
    ref = torch.nn.functional.conv2d(
        torch.from_numpy(np.where(x >= 0, 0.25, -0.25).astype(np.float32)),
        torch.from_numpy(np.where(w >= 0, 0.5, -0.5).astype(np.float32)),
        padding=1,
    ).numpy()
    np.testing.assert_allclose(_run(lowered, x), ref, rtol=1e-5, atol=1e-5)
    conv = next(n for n in lowered.graph.node if n.op_type == "Conv")
    filt = numpy_helper.to_array(
        next(t for t in lowered.graph.initializer if t.name == conv.input[1])
    )
    assert set(np.unique(np.abs(filt))) == {0.125}


def test_activation_scale_kept_as_mul_before_a_non_conv() -> None:
    lowered, report = lower_bipolar_quant(_bipolar_graph(0.25, "relu"))
    assert report.kept_scales == ["xq"]
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(lowered, x), np.where(x >= 0, 0.25, 0.0), atol=1e-7)


def test_strided_symmetric_padding_is_reported() -> None:
    class Strided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 3, 2, 1)
            self.b = BinaryConv2d(32, 32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.conv(x))

    _, report = lower_bipolar_quant(export_qonnx(Strided().eval()))
    assert len(report.warnings) == 1 and "stride" in report.warnings[0]


def test_non_binary_qonnx_quantizer_is_refused() -> None:
    model = _bipolar_graph(1.0, "relu")
    model.graph.node[0].op_type = "Quant"
    with pytest.raises(LoweringError, match="only BipolarQuant"):
        lower_bipolar_quant(model)


def test_grouped_binary_conv_needs_32_channels_per_group() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        BinaryConv2d(32, 32, 3, groups=2)
