"""The whole export chain on a tiny student: LceBconv2d in the flatbuffer, parity with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.runtime import TFLiteRunner
from export.student_export import export_student
from export.tflite import flatbuffer_ops, op_histogram
from students import create_student

pytestmark = pytest.mark.slow


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    args = {"width": 32, "depths": [2, 1], "embedding_size": 16}
    student = create_student("birealface", **args).eval()
    _randomise_bn(student)
    twin = create_student("birealface", binary=False, **args).eval()
    twin.load_state_dict(student.state_dict())
    probe = torch.randn(6, 3, 112, 112)
    out = tmp_path_factory.mktemp("export")
    result = export_student(student, twin, probe, out)
    return student, twin, probe, result


def test_every_binary_conv_becomes_lce_bconv2d(exported) -> None:
    _, _, _, result = exported
    fb = Path(result.lce_tflite).read_bytes()
    ops = op_histogram(fb)
    assert ops["LceBconv2d"] == 3
    assert result.metrics["export.bconv_coverage"] == 1.0
    assert result.float_layers == []
    # nothing between the binarizer and the binary conv: no float conv has a +-1 filter left
    names = [op.name for op in flatbuffer_ops(fb)]
    assert "TRANSPOSE" not in names and "SELECT_V2" not in names
    float_ops = op_histogram(Path(result.float_tflite).read_bytes())
    assert "LceBconv2d" not in float_ops and float_ops["CONV_2D"] >= 3
    report = json.loads(Path(result.report).read_text())
    assert report["converter"] == "onnx2tf" and report["bconv_coverage"] == 1.0
    assert len(report["binary_layers"]) == 3


def test_lce_and_float_tflite_match_pytorch(exported) -> None:
    student, twin, probe, result = exported
    with torch.no_grad():
        ref = student(probe).numpy()
        ref_float = twin(probe).numpy()
    lce = TFLiteRunner(Path(result.lce_tflite).read_bytes(), binary=True).embed(probe.numpy())
    flt = TFLiteRunner(Path(result.float_tflite).read_bytes(), binary=False).embed(probe.numpy())
    np.testing.assert_allclose(lce, ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(flt, ref_float, rtol=1e-3, atol=1e-3)
    assert result.metrics["export.cosine_min"] > 0.9999
    # the binary model really binarizes: it differs from its float twin
    assert np.abs(ref - ref_float).max() > 1e-2


def test_latency_is_measured(exported) -> None:
    _, _, _, result = exported
    speed = TFLiteRunner(Path(result.lce_tflite).read_bytes()).latency(runs=5, warmup=1)
    assert speed["latency_ms_p50"] > 0 and speed["fps"] == pytest.approx(
        1000 / speed["latency_ms_p50"]
    )


def test_xnnpack_runs_the_float_ops_of_an_lce_model(exported, monkeypatch) -> None:
    """XNNPACK may take the float ops of an LCE model (stem, head): same embeddings up to float
    rounding, and it is what latency is measured with unless told otherwise."""
    from export import runtime

    student, _, probe, result = exported
    fb = Path(result.lce_tflite).read_bytes()
    with torch.no_grad():
        ref = student(probe).numpy()
    xnn = TFLiteRunner(fb, binary=True, xnnpack=True).embed(probe.numpy())
    np.testing.assert_allclose(xnn, ref, rtol=1e-3, atol=1e-3)
    seen = []

    class Spy(TFLiteRunner):
        def __init__(self, *args, **kwargs) -> None:
            seen.append(kwargs["xnnpack"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(runtime, "TFLiteRunner", Spy)
    runtime.measure_latency(fb, binary=True, runs=2, warmup=1, instances=1)
    runtime.measure_latency(fb, binary=True, runs=2, warmup=1, instances=1, xnnpack=False)
    assert seen == [True, False]


def test_latencies_of_several_models_are_measured_in_turns(exported, monkeypatch) -> None:
    from export import runtime

    _, _, _, result = exported
    lce = Path(result.lce_tflite).read_bytes()
    flt = Path(result.float_tflite).read_bytes()
    order = []

    class Spy(TFLiteRunner):
        def __init__(self, flatbuffer, *args, **kwargs) -> None:
            order.append(("lce" if flatbuffer is lce else "float", kwargs["xnnpack"]))
            super().__init__(flatbuffer, *args, **kwargs)

    monkeypatch.setattr(runtime, "TFLiteRunner", Spy)
    models = {"lce": (lce, {"binary": True}), "float": (flt, {"binary": False})}
    speeds = runtime.measure_latencies(models, runs=4, warmup=1, instances=2)
    assert order == [("lce", True), ("float", True)] * 2
    for s in speeds.values():
        assert s["runs"] == 8 and s["latency_ms_p50"] > 0
        assert s["latency_ms_p50_min_instance"] <= s["latency_ms_p50_max_instance"]


def test_layers_left_float_are_named_and_fail_the_export(tmp_path, monkeypatch) -> None:
    """If LCE fused nothing, the export names every binarized layer and refuses."""
    import export.student_export as chain

    monkeypatch.setattr(chain, "convert_lce", chain.convert_float)  # no LCE: all convs float
    torch.manual_seed(0)
    args = {"width": 32, "depths": [1, 1], "embedding_size": 8}
    student = create_student("birealface", **args).eval()
    twin = create_student("birealface", binary=False, **args).eval()
    with pytest.raises(chain.CoverageError) as err:
        export_student(student, twin, torch.randn(2, 3, 112, 112), tmp_path)
    message = str(err.value)
    assert "only 0 of 2" in message
    assert "stages.0.conv" in message and "stages.2.conv" in message
    report = json.loads((tmp_path / "export_report.json").read_text())
    assert report["bconv_coverage"] == 0.0
    assert sorted(report["float_layers"]) == ["stages.0.conv", "stages.2.conv"]


def test_macs_counted_from_the_flatbuffer_match_the_pytorch_layers(exported) -> None:
    """1-bit MACs of the LCE flatbuffer = those of the Brevitas binary convs; the float twin
    holds the same total as 32-bit MACs."""
    from export.tflite import flatbuffer_macs
    from students.layers import BinaryConv2d

    student, _, probe, result = exported
    expected = 0

    def count(module, inputs, output) -> None:
        nonlocal expected
        conv = module.conv
        kh, kw = conv.kernel_size
        per_image = output[0].numel() * kh * kw * conv.in_channels // conv.groups
        expected += per_image

    hooks = [
        m.register_forward_hook(count)
        for m in student.modules()
        if isinstance(m, BinaryConv2d) and m.binary
    ]
    with torch.no_grad():
        student(probe[:1])
    for h in hooks:
        h.remove()
    lce = flatbuffer_macs(Path(result.lce_tflite).read_bytes())
    twin = flatbuffer_macs(Path(result.float_tflite).read_bytes())
    assert lce["binary_macs"] == expected > 0
    assert twin["binary_macs"] == 0
    assert twin["float_macs"] == lce["float_macs"] + lce["binary_macs"]
    assert result.metrics["model.binary_macs"] == expected
