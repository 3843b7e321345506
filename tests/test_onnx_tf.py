"""The onnx-tf route: graph passes checked in ONNX Runtime, then LceBconv2d in the flatbuffer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.layer_report import layer_table
from export.lowering import lower_bipolar_quant
from export.onnx_export import export_qonnx
from export.onnx_tf import (
    legacy_opset,
    prepare_for_onnx_tf,
    single_axis_reduce_sums,
    unit_pads,
)
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


def test_reduce_sums_over_several_axes_become_one_axis_chains() -> None:
    # onnx-tf 1.10 reduces only axes[0] of a ReduceSum-13: the pass leaves one axis per node
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "abc"]
    inits = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (("hw", [2, 3]), ("neg", [-1, 1]), ("one_axis", [1]))
    ]
    nodes = [
        helper.make_node("ReduceSum", ["x", "hw"], ["a"], "pool", keepdims=1),
        helper.make_node("ReduceSum", ["x", "neg"], ["b"], "drop", keepdims=0),
        helper.make_node("ReduceSum", ["x", "one_axis"], ["c"], "one", keepdims=1),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], outs, inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    split, names = single_axis_reduce_sums(model)
    assert names == ["pool", "drop"]
    reduce_sums = [n for n in split.graph.node if n.op_type == "ReduceSum"]
    assert len(reduce_sums) == 5
    consts = {t.name: numpy_helper.to_array(t) for t in split.graph.initializer}
    assert all(consts[n.input[1]].size == 1 for n in reduce_sums)
    data = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)

    def run(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": data})

    for got, want in zip(run(split), run(model), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _pad_and_sum_model():
    """x (1, 3, 4, 5) -> one-pad H, W by 2 before and 3 after -> sums over (H, W), then (C, W)."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 9])
    inits = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (("hw", [2, 3]), ("cw", [1, -1]), ("pads", [0, 0, 2, 2, 0, 0, 3, 3]))
    ]
    inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    nodes = [
        helper.make_node("Pad", ["x", "pads", "one"], ["p"], "pad", mode="constant"),
        helper.make_node("ReduceSum", ["p", "hw"], ["a"], "pool", keepdims=1),
        helper.make_node("Mul", ["p", "a"], ["b"], "scale"),
        helper.make_node("ReduceSum", ["b", "cw"], ["y"], "drop", keepdims=0),
    ]
    return helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )


def test_wide_pads_become_chains_of_unit_pads() -> None:
    from onnx import numpy_helper

    model = _pad_and_sum_model()
    split, names = unit_pads(model)
    assert names == ["pad"]
    consts = {t.name: numpy_helper.to_array(t) for t in split.graph.initializer}
    pads = [consts[n.input[1]] for n in split.graph.node if n.op_type == "Pad"]
    assert len(pads) == 3 and all(p.max() <= 1 for p in pads)
    assert sum(pads).tolist() == [0, 0, 2, 2, 0, 0, 3, 3]
    data = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(_ort(split, data), _ort(model, data), rtol=1e-6)


@pytest.mark.slow
def test_onnx_tf_pads_and_sums_like_onnx_runtime(tmp_path) -> None:
    # unprepared, onnx-tf 1.10 fails on the pad of 2 ("Invalid value in tensor used for
    # shape: -2") and sums over H only / C only (wrong values and shapes)
    import onnx
    import tensorflow as tf

    from export.onnx_tf import convert_with_onnx_tf

    model = _pad_and_sum_model()
    onnx.save(model, tmp_path / "m.onnx")
    saved = convert_with_onnx_tf(tmp_path / "m.onnx", tmp_path / "saved_model")
    data = np.random.default_rng(0).standard_normal((1, 3, 4, 5)).astype(np.float32)
    fn = tf.saved_model.load(str(saved)).signatures["serving_default"]
    got = next(iter(fn(input=tf.constant(data.transpose(0, 2, 3, 1))).values())).numpy()
    np.testing.assert_allclose(got, _ort(model, data), rtol=1e-5, atol=1e-5)


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
