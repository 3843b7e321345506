"""Every layer kind through lowering -> onnx2tf -> LCE: op types in the flatbuffer, parity, and
the per-layer report's reasons for binary convs LCE cannot fuse.

(tests/test_lowering.py checks the lowered ONNX in ONNX Runtime; tests/test_export_lce.py
the BiRealFace student; this file the layer kinds those leave out of the flatbuffer.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from brevitas.nn import QuantIdentity
from brevitas.quant.binary import SignedBinaryActPerTensorConst
from torch import nn

from export.layer_report import layer_table
from export.runtime import TFLiteRunner
from export.student_export import export_student
from export.tflite import flatbuffer_ops, op_histogram
from students.layers import BinaryConv2d, SamePadConv2d

pytestmark = pytest.mark.slow


class HalfSign(SignedBinaryActPerTensorConst):
    """sign(x) * 0.5: an activation scale the lowering pass must fold or keep."""

    min_val = -0.5
    max_val = 0.5


class AllKinds(nn.Module):
    """Strided float stem, depthwise float conv, then binary convs of every kind."""

    def __init__(self, binary: bool = True) -> None:
        super().__init__()
        self.stem = SamePadConv2d(3, 32, 3, 2)  # strided float conv (SAME-padded)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)  # depthwise, float
        self.one_pad = BinaryConv2d(32, 32, 3, pad_value=1.0, binary=binary)
        self.bn1 = nn.BatchNorm2d(32)
        self.zero_pad = BinaryConv2d(32, 64, 3, pad_value=0.0, binary=binary)
        self.per_channel = BinaryConv2d(64, 64, 1, binary=binary, weight_scale="mean_abs_channel")
        self.bn2 = nn.BatchNorm2d(64)
        self.grouped = BinaryConv2d(64, 64, 3, groups=2, binary=binary)  # 32 channels per group
        self.scaled = BinaryConv2d(64, 64, 1, binary=binary)
        if binary:  # activation scale 0.5, folded into the conv's filter by the lowering
            self.scaled.act = QuantIdentity(act_quant=HalfSign, return_quant_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.stem(x))
        x = x + self.bn1(self.one_pad(x))  # residual add
        # binary -> binary directly (LCE fuses the next sign into the first conv's output);
        # a BN before the grouped conv: fed straight by a binary conv, LCE 0.16's grouped
        # LceBconv2d diverged from PyTorch on x86 (cosine 0.79; see the export notes)
        x = self.grouped(self.bn2(self.per_channel(self.zero_pad(x))))
        return self.scaled(x).mean((2, 3))


class SharedSign(BinaryConv2d):
    """A binary conv whose (scaled) binarized input also feeds an add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(x)
        return self.conv(a) + a


class Unfusable(nn.Module):
    """Binary convs LCE cannot fuse: 16 channels per group; a scale kept as Mul."""

    def __init__(self, binary: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 4, bias=False)
        self.grouped16 = BinaryConv2d(32, 32, 3, groups=2, binary=binary, lce_groups=False)
        self.shared = SharedSign(32, 32, 1, binary=binary)
        if binary:
            self.shared.act = QuantIdentity(act_quant=HalfSign, return_quant_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the scaled sign of ``shared`` also feeds an add: its scale stays a Mul
        return self.shared(self.grouped16(self.stem(x))).mean((2, 3))


def _pair(cls: type[nn.Module]) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = cls().eval()
    g = torch.Generator().manual_seed(1)
    for m in student.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    twin = cls(binary=False).eval()
    twin.load_state_dict(student.state_dict(), strict=False)
    return student, twin


def test_every_layer_kind_becomes_lce_bconv2d_with_parity(tmp_path) -> None:
    student, twin = _pair(AllKinds)
    probe = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    result = export_student(student, twin, probe, tmp_path)
    fb = (tmp_path / "student_lce.tflite").read_bytes()
    ops = op_histogram(fb)
    assert ops["LceBconv2d"] == 5 and result.metrics["export.bconv_coverage"] == 1.0
    assert ops["DEPTHWISE_CONV_2D"] == 1  # the float depthwise conv is left as it is
    assert ops["CONV_2D"] == 1  # the strided stem
    assert "MUL" not in ops and "TRANSPOSE" not in ops  # scale folded, NHWC throughout
    report = json.loads(Path(result.report).read_text())
    layers = {e["name"]: e for e in report["layers"]}
    assert set(layers) == {"one_pad", "zero_pad", "per_channel", "grouped", "scaled"}
    assert all(e["became"] == "LceBconv2d" and e["reason"] is None for e in layers.values())
    assert layers["zero_pad"]["padding"] == "zero" and layers["one_pad"]["padding"] == "one"
    assert layers["grouped"]["groups"] == 2
    assert report["lowering"]["folded_scales"] and not report["lowering"]["kept_scales"]
    grouped = next(op for op in flatbuffer_ops(fb) if op.index == layers["grouped"]["op_index"])
    assert grouped.options["channels_in"] == 64  # 2 groups of 32: one packed word per group
    # 1-bit MACs: 32 input channels per output for the grouped conv, not 64; the grouped
    # conv's output is bit-packed (the next conv's sign fused in) yet has 64 channels
    pixels = 56 * 56
    expected = pixels * (32 * 9 * 32 + 64 * 9 * 32 + 64 * 64 + 64 * 9 * 32 + 64 * 64)
    assert result.metrics["model.binary_macs"] == expected
    with torch.no_grad():
        ref = student(probe).numpy()
    got = TFLiteRunner(fb).embed(probe.numpy())
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    for runtime in ("onnx", "lce", "onnx_float", "tflite_float"):
        assert result.metrics[f"export.parity.{runtime}.cosine_min"] > 0.9999
        assert result.metrics[f"export.parity.{runtime}.max_abs_diff"] < 1e-3
    markdown = (tmp_path / "export_report.md").read_text()
    assert "| `zero_pad` | 32 | 64 | 3 | 1 | zero | LceBconv2d |" in markdown


def test_report_says_which_layer_stayed_float_and_why(tmp_path) -> None:
    student, twin = _pair(Unfusable)
    probe = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    result = export_student(student, twin, probe, tmp_path, allow_partial=True)
    report = json.loads(Path(result.report).read_text())
    layers = {e["name"]: e for e in report["layers"]}
    assert layers["grouped16"]["became"] == "CONV_2D (float)"
    assert "16 input channels per group" in layers["grouped16"]["reason"]
    assert layers["shared"]["became"] == "CONV_2D (float)"
    assert "activation scale kept as Mul" in layers["shared"]["reason"]
    assert report["bconv_coverage"] == 0.0 and sorted(report["float_layers"]) == [
        "grouped16",
        "shared",
    ]
    assert report["lowering"]["kept_scales"]
    fb = (tmp_path / "student_lce.tflite").read_bytes()
    assert [e.name for e in layer_table(student, fb)] == ["grouped16", "shared"]
    assert "activation scale kept as Mul" in (tmp_path / "export_report.md").read_text()
    assert result.metrics["export.parity.lce.cosine_min"] > 0.9999
