"""The onnx-tf route: graph passes checked in ONNX Runtime, then LceBconv2d in the flatbuffer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.layer_report import layer_table
from export.lowering import lower_bipolar_quant
from export.onnx_export import export_qonnx
from export.onnx_tf import legacy_opset, prepare_for_onnx_tf
from export.runtime import TFLiteRunner
from export.tensorflow import CONVERTERS
from export.tflite import convert_lce, flatbuffer_ops, op_histogram
from students import create_student

ARGS = {"width": 32, "depths": [1, 1], "embedding_size": 8}


@pytest.fixture(scope="module")
def lowered():
    torch.manual_seed(0)
    student = create_student("birealface", **ARGS).eval()
    model, report = lower_bipolar_quant(export_qonnx(student))
    return student, model, report


def _ort(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_prepared_graph_is_opset_13_nhwc_and_equivalent(lowered) -> None:
    student, model, report = lowered
    prepared, prep = prepare_for_onnx_tf(model, report.binary_convs)
    assert prep.prepared == report.binary_convs and not prep.skipped
    assert prep.nhwc_batchnorm == report.binary_convs  # BN folds into LceBconv2d
    assert next(o.version for o in prepared.opset_import if o.domain == "") == 13
    assert [d.dim_value for d in prepared.graph.input[0].type.tensor_type.shape.dim] == [
        1,
        112,
        112,
        3,
    ]
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    np.testing.assert_allclose(
        _ort(prepared, x.transpose(0, 2, 3, 1).copy()), _ort(model, x), rtol=1e-5, atol=1e-5
    )


def test_legacy_opset_refuses_operators_whose_meaning_changed(lowered) -> None:
    from onnx import helper

    _, model, _ = lowered
    model = legacy_opset(model)  # fine: only type-only changes
    bad = helper.make_model(
        helper.make_graph(
            [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs")], "g", [], []
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    with pytest.raises(RuntimeError, match="Resize"):
        legacy_opset(bad)


@pytest.mark.slow
def test_onnx_tf_route_reaches_lce_bconv2d(lowered, tmp_path) -> None:
    student, model, report = lowered
    import onnx

    onnx.save(model, tmp_path / "student.onnx")
    saved = CONVERTERS.get("onnx-tf")(
        tmp_path / "student.onnx", tmp_path / "saved_model", binary_convs=report.binary_convs
    )
    fb = convert_lce(saved)
    ops = op_histogram(fb)
    assert ops["LceBconv2d"] == 2 and "CONV_2D" in ops
    producers = {out: op for op in flatbuffer_ops(fb) for out in op.outputs}
    for op in flatbuffer_ops(fb):
        if op.name == "LceBconv2d":  # the binarizer feeds it directly: no Transpose between
            assert producers[op.inputs[0]].name == "LceQuantize"
    assert all(e.became == "LceBconv2d" for e in layer_table(student, fb))
    probe = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = student(probe).numpy()
    np.testing.assert_allclose(TFLiteRunner(fb).embed(probe.numpy()), ref, rtol=1e-3, atol=1e-3)
