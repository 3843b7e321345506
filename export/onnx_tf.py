"""The second ONNX -> TensorFlow route: onnx-tf 1.10, with the graph passes LCE needs.

onnx-tf keeps ONNX's NCHW layout and wraps every convolution in NCHW -> NHWC -> NCHW
transposes, pads explicit conv padding with a zero ``Pad`` op and knows ONNX opsets up to 13
for most operators. Unprepared, a binarizer ``Where`` then reaches the convolution through a
``Transpose`` (and a zero ``Pad``) and LCE leaves every binary conv float. Before conversion:

* :func:`legacy_opset` relabels the graph as opset 13 where the newer operator versions only
  added types (checked node by node; anything else is refused);
* :func:`nhwc_input` makes the model take NHWC images like the onnx2tf route's;
* :func:`single_axis_reduce_sums` splits every ``ReduceSum`` over several axes into a chain
  of one-axis ``ReduceSum`` nodes: onnx-tf 1.10's ReduceSum-13 handler keeps only the first
  entry of the ``axes`` input (``axis = axes[0]``), so a sum over H and W silently summed H
  only (the additive attention's token pooling in ``students.attention``);
* :func:`unit_pads` splits every constant ``Pad`` wider than one element per side into a
  chain of pads of at most one: onnx-tf's Pad handler traces a negative-pad branch
  (``tf.slice`` from ``-pads``) that TensorFlow rejects at conversion time for a pad of two
  or more ("Invalid value in tensor used for shape: -2"; the BinaryDenseNets' 7x7 stride-2
  stem pads 2 + 3);
* :func:`sign_inside_layout` moves each binarizer (and its constant one-padding) between an
  explicit NCHW -> NHWC / NHWC -> NCHW transpose pair, so onnx-tf's own layout transpose
  cancels the second one and ``Select`` feeds ``Conv2D`` directly; stride-1 convolutions
  with symmetric ``k // 2`` zero padding become ``auto_pad=SAME_UPPER`` (TF ``SAME``).

onnx-tf imports tensorflow-addons, which needs Keras 2: the conversion runs in a subprocess
(:mod:`export._onnx_tf_worker`) with ``TF_USE_LEGACY_KERAS=1`` and ``tf_keras`` standing in
for ``keras``, so the onnx2tf route in this process keeps Keras 3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

LEGACY_OPSET = 13
PREP_FILE = "facekd_onnx_tf.json"
NCHW_TO_NHWC = [0, 2, 3, 1]
NHWC_TO_NCHW = [0, 3, 1, 2]

# Operators whose versions after opset 13 only added input types (bfloat16, int4, ...):
# relabelling them as opset 13 keeps their meaning. Conditions on attributes are checked below.
_TYPE_ONLY = {
    "Abs", "Add", "BatchNormalization", "Cast", "Clip", "Constant", "Div", "Equal", "Exp",
    "Flatten", "Gather", "Greater", "GreaterOrEqual", "HardSigmoid", "Identity", "Less",
    "LessOrEqual", "Log", "Max", "Mean", "Min", "Mul", "Neg", "Pad", "Pow", "PRelu", "Relu",
    "Reshape", "Shape", "Sigmoid", "Sign", "Size", "Sqrt", "Squeeze", "Sub", "Sum", "Tanh",
    "Transpose", "Unsqueeze", "Where",
}  # fmt: skip


class OnnxTfError(RuntimeError):
    """The graph holds something the onnx-tf route cannot convert faithfully."""


@dataclass
class OnnxTfPrep:
    """What :func:`sign_inside_layout` did, by ONNX Conv node name."""

    prepared: list[str] = field(default_factory=list)
    same_padding: list[str] = field(default_factory=list)
    nhwc_batchnorm: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    split_reduce_sums: list[str] = field(default_factory=list)
    split_pads: list[str] = field(default_factory=list)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def legacy_opset(model: onnx.ModelProto, target: int = LEGACY_OPSET) -> onnx.ModelProto:
    """A copy of ``model`` labelled opset ``target``, if no operator's meaning changes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    current = _opset(model)
    if current <= target:
        return model
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        while node.input and not node.input[-1]:  # onnx-tf reads '' as a tensor name
            node.input.pop()
        if node.domain not in ("", "ai.onnx"):
            raise OnnxTfError(f"{node.name}: operator domain {node.domain!r} is not plain ONNX")
        new = defs.get_schema(node.op_type, current).since_version
        old = defs.get_schema(node.op_type, target).since_version
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if new == 18 and old < 18 and node.op_type.startswith("Reduce"):
            _axes_to_attribute(node, consts)
            continue
        if new != old and node.op_type not in _TYPE_ONLY:
            raise OnnxTfError(
                f"{node.name} ({node.op_type} v{new}) has no opset-{target} equivalent for onnx-tf"
            )
        if node.op_type == "Pad" and (len(node.input) > 3 or attrs.get("mode") == b"wrap"):
            raise OnnxTfError(f"{node.name}: Pad with axes or wrap mode needs opset 18+")
        if node.op_type == "Reshape" and attrs.get("allowzero"):
            raise OnnxTfError(f"{node.name}: Reshape with allowzero needs opset 14+")
        if node.op_type == "BatchNormalization":
            if attrs.get("training_mode"):
                raise OnnxTfError(f"{node.name}: BatchNormalization in training mode")
            keep = [a for a in node.attribute if a.name != "training_mode"]
            del node.attribute[:]
            node.attribute.extend(keep)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = target
    onnx.checker.check_model(model)
    return model


def _axes_to_attribute(node: onnx.NodeProto, consts: dict) -> None:
    """A ``Reduce*`` v18 node (axes as an input) in its v13 form (axes as an attribute)."""
    if len(node.input) > 1 and node.input[1]:
        axes = consts.get(node.input[1])
        if axes is None:
            raise OnnxTfError(f"{node.name}: {node.op_type} with computed axes needs opset 18")
        del node.input[1:]
        node.attribute.append(helper.make_attribute("axes", [int(a) for a in axes]))
    if any(a.name == "noop_with_empty_axes" and a.i for a in node.attribute):
        raise OnnxTfError(f"{node.name}: {node.op_type} with noop_with_empty_axes needs opset 18")


def single_axis_reduce_sums(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Every ``ReduceSum`` over k > 1 constant axes as a chain of k one-axis ``ReduceSum``.

    Exact up to float summation order. Without ``keepdims`` the axes are reduced from the last
    to the first so that the remaining indices stay valid (negative axes need the input's rank
    from shape inference). Returns the model and the names of the nodes split.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ranks: dict[str, int] | None = None
    nodes, split = [], []
    for node in model.graph.node:
        axes = consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if node.op_type != "ReduceSum" or axes is None or axes.size < 2:
            nodes.append(node)
            continue
        keepdims = _attrs(node).get("keepdims", 1)
        axes = [int(a) for a in axes.reshape(-1)]
        if any(a < 0 for a in axes):
            if ranks is None:
                inferred = onnx.shape_inference.infer_shapes(model).graph
                ranks = {
                    v.name: len(v.type.tensor_type.shape.dim)
                    for v in [*inferred.input, *inferred.value_info, *inferred.output]
                    if v.type.tensor_type.HasField("shape")
                }
            rank = ranks.get(node.input[0])
            if rank is None:
                raise OnnxTfError(f"{node.name}: ReduceSum with negative axes of unknown rank")
            axes = [a % rank for a in axes]
        axes = sorted(set(axes), reverse=True)
        current = node.input[0]
        for i, axis in enumerate(axes):
            axis_name = f"{node.name}_axis{i}"
            axis_value = numpy_helper.from_array(np.array([axis], np.int64), axis_name)
            model.graph.initializer.append(axis_value)
            out = node.output[0] if i == len(axes) - 1 else f"{node.name}_sum{i}"
            nodes.append(
                helper.make_node(
                    "ReduceSum", [current, axis_name], [out], f"{node.name}_{i}", keepdims=keepdims
                )
            )
            current = out
        split.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, split


def unit_pads(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Every constant/edge ``Pad`` with some pad > 1 as a chain of pads of at most 1 per side.

    Exact: padding by a then b with the same constant (or edge replication) is padding by
    a + b. Pads must be constant, non-negative. Returns the model and the names of the nodes
    split.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes, split = [], []
    for node in model.graph.node:
        pads = consts.get(node.input[1]) if node.op_type == "Pad" and len(node.input) > 1 else None
        mode = _attrs(node).get("mode", b"constant")
        if pads is None or pads.max(initial=0) <= 1 or mode not in (b"constant", b"edge"):
            nodes.append(node)
            continue
        if pads.min() < 0:
            raise OnnxTfError(f"{node.name}: Pad with negative pads {pads.tolist()}")
        remaining = pads.astype(np.int64).reshape(-1)
        current, step = node.input[0], 0
        while remaining.any():
            now = np.minimum(remaining, 1)
            remaining = remaining - now
            pads_name = f"{node.name}_pads{step}"
            model.graph.initializer.append(numpy_helper.from_array(now, pads_name))
            out = node.output[0] if not remaining.any() else f"{node.name}_step{step}"
            inputs = [current, pads_name, *node.input[2:3]]
            nodes.append(
                helper.make_node("Pad", inputs, [out], f"{node.name}_{step}", mode=mode.decode())
            )
            current, step = out, step + 1
        split.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, split


def rename_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """Graph inputs/outputs named ``input``/``embedding`` (onnx-tf drops names like 'input.1')."""
    renames = {}
    if len(model.graph.input) == 1:
        renames[model.graph.input[0].name] = "input"
    if len(model.graph.output) == 1:
        renames[model.graph.output[0].name] = "embedding"
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
    return model


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _binarizer(producers: dict, consts: dict, name: str) -> onnx.NodeProto | None:
    """The ``Where(x >= 0, 1, -1)`` node producing ``name`` (the lowering pass's binarizer)."""
    node = producers.get(name)
    if node is None or node.op_type != "Where":
        return None
    ge = producers.get(node.input[0])
    values = [consts.get(i) for i in node.input[1:]]
    if ge is None or ge.op_type != "GreaterOrEqual" or any(v is None for v in values):
        return None
    zero = consts.get(ge.input[1])
    if zero is None or np.any(zero != 0) or np.any(values[0] != 1) or np.any(values[1] != -1):
        return None
    return node


def _nhwc_batchnorm(
    graph: onnx.GraphProto, conv: onnx.NodeProto, consts: dict, base: str
) -> tuple[int, list[onnx.NodeProto]] | None:
    """The BatchNormalization after ``conv`` as NHWC ``Mul``/``Add`` inside a transpose pair.

    onnx-tf's own layout transpose after the conv then cancels and LCE folds the BatchNorm
    into ``LceBconv2d``. Returns (index of the BN node, the nodes replacing it) or None.
    """
    users = [(i, n) for i, n in enumerate(graph.node) if conv.output[0] in n.input]
    if len(users) != 1 or users[0][1].op_type != "BatchNormalization":
        return None
    index, bn = users[0]
    params = [consts.get(name) for name in bn.input[1:5]]
    if len(bn.output) != 1 or any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)
    scale = gamma / np.sqrt(var + float(_attrs(bn).get("epsilon", 1e-5)))
    shift = beta - mean * scale
    names = (base + "_bn_scale", base + "_bn_shift")
    for name, value in zip(names, (scale, shift), strict=True):
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    nodes = [
        helper.make_node(
            "Transpose",
            [conv.output[0]],
            [base + "_bn_in"],
            perm=NCHW_TO_NHWC,
            name=base + "_bn_in",
        ),
        helper.make_node(
            "Mul", [base + "_bn_in", names[0]], [base + "_bn_mul"], name=base + "_bn_mul"
        ),
        helper.make_node(
            "Add", [base + "_bn_mul", names[1]], [base + "_bn_add"], name=base + "_bn_add"
        ),
        helper.make_node(
            "Transpose",
            [base + "_bn_add"],
            [bn.output[0]],
            perm=NHWC_TO_NCHW,
            name=base + "_bn_out",
        ),
    ]
    return index, nodes


def sign_inside_layout(
    model: onnx.ModelProto, binary_convs: list[str] | None = None
) -> tuple[onnx.ModelProto, OnnxTfPrep]:
    """Put each binarizer feeding a binary conv inside an NHWC transpose pair (see module doc).

    ``binary_convs``: names of the Conv nodes with binary filters (the lowering report's
    ``binary_convs``); None: every Conv whose input is a binarizer.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    prep = OnnxTfPrep()
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    for name, value in (("facekd_nhwc_zero", 0.0), ("facekd_nhwc_one", 1.0)):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    graph.initializer.append(
        numpy_helper.from_array(np.array(-1.0, np.float32), "facekd_nhwc_minus_one")
    )
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "Conv":
            continue
        label = node.name or node.output[0]
        source = producers.get(node.input[0])
        pad = source if source is not None and source.op_type == "Pad" else None
        sign_name = pad.input[0] if pad is not None else node.input[0]
        sign = _binarizer(producers, consts, sign_name)
        if sign is None:
            if binary_convs is not None and label in binary_convs:
                what = source.op_type if source is not None else "the graph input"
                prep.skipped[label] = f"input comes from {what}, not a binarizer"
            continue
        if binary_convs is not None and label not in binary_convs:
            continue
        attrs = _attrs(node)
        group = int(attrs.get("group", 1))
        if group > 1:
            prep.skipped[label] = (
                f"grouped conv ({group} groups): onnx-tf splits the binarized input per group "
                "(Split between sign and conv)"
            )
        nodes = []
        x = producers[sign.input[0]].input[0]
        base = f"{label}_nhwc"
        nodes.append(
            helper.make_node("Transpose", [x], [base + "_in"], perm=NCHW_TO_NHWC, name=base + "_in")
        )
        nodes.append(
            helper.make_node(
                "GreaterOrEqual",
                [base + "_in", "facekd_nhwc_zero"],
                [base + "_ge"],
                name=base + "_ge",
            )
        )
        nodes.append(
            helper.make_node(
                "Where",
                [base + "_ge", "facekd_nhwc_one", "facekd_nhwc_minus_one"],
                [base + "_sign"],
                name=base + "_sign",
            )
        )
        last = base + "_sign"
        if pad is not None:
            pads = consts.get(pad.input[1])
            value = consts.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
            mode = _attrs(pad).get("mode", b"constant")
            if pads is None or mode != b"constant" or len(pads) != 8 or pads[[0, 1, 4, 5]].any():
                prep.skipped[label] = f"padding {pad.name} is not a constant spatial pad"
                continue
            nhwc = pads.reshape(2, 4)[:, NCHW_TO_NHWC].reshape(-1).astype(np.int64)
            pads_name, value_name = base + "_pads", base + "_pad_value"
            graph.initializer.append(numpy_helper.from_array(nhwc, pads_name))
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(value, np.float32).reshape(()), value_name)
            )
            nodes.append(
                helper.make_node(
                    "Pad", [last, pads_name, value_name], [base + "_pad"], name=base + "_pad"
                )
            )
            last = base + "_pad"
        nodes.append(
            helper.make_node(
                "Transpose", [last], [base + "_out"], perm=NHWC_TO_NCHW, name=base + "_out"
            )
        )
        node.input[0] = base + "_out"
        kernel = list(attrs.get("kernel_shape", consts[node.input[1]].shape[2:]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        strides = list(attrs.get("strides", [1, 1]))
        dilations = list(attrs.get("dilations", [1, 1]))
        if any(pads):
            same = [k // 2 for k in kernel] * 2
            if (
                pads == same
                and strides == [1, 1]
                and dilations == [1, 1]
                and all(k % 2 for k in kernel)
            ):
                keep = [a for a in node.attribute if a.name != "pads"]
                del node.attribute[:]
                node.attribute.extend(keep)
                node.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
                prep.same_padding.append(label)
            else:
                prep.skipped[label] = (
                    f"zero padding {pads} with stride {strides} is not TF SAME: onnx-tf emits a "
                    "zero Pad op between sign and conv"
                )
        new_nodes[index] = nodes
        if label not in prep.skipped:
            prep.prepared.append(label)
            bn = _nhwc_batchnorm(graph, node, consts, base)
            if bn is not None:
                replaced[bn[0]] = bn[1]
                prep.nhwc_batchnorm.append(label)
    ordered = []
    for index, node in enumerate(graph.node):
        ordered.extend(new_nodes.get(index, []))
        ordered.extend(replaced.get(index, [node]))
    del graph.node[:]
    graph.node.extend(ordered)
    from export.lowering import fold_constants

    model = fold_constants(model)  # drops binarizers and pads no longer used
    onnx.checker.check_model(model)
    return model, prep


def nhwc_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Take the image NHWC, like the onnx2tf route's models (a Transpose to NCHW inside)."""
    graph = model.graph
    value = graph.input[0]
    dims = value.type.tensor_type.shape.dim
    if len(graph.input) != 1 or len(dims) != 4:
        return model
    inner = value.name + "_nchw"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == value.name:
                node.input[i] = inner
    graph.node.insert(
        0,
        helper.make_node(
            "Transpose", [value.name], [inner], perm=NHWC_TO_NCHW, name="facekd_input_nchw"
        ),
    )
    shape = [d.dim_value or d.dim_param for d in dims]
    nhwc = [shape[i] for i in NCHW_TO_NHWC]
    graph.input[0].CopyFrom(
        helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, nhwc)
    )
    return model


def prepare_for_onnx_tf(
    model: onnx.ModelProto, binary_convs: list[str] | None = None
) -> tuple[onnx.ModelProto, OnnxTfPrep]:
    """Both passes and the I/O renaming: the ONNX graph handed to onnx-tf."""
    model, prep = sign_inside_layout(model, binary_convs)
    model, prep.split_reduce_sums = single_axis_reduce_sums(legacy_opset(model))
    model, prep.split_pads = unit_pads(model)
    return nhwc_input(rename_io(model)), prep


def run_onnx_tf(onnx_path: str | os.PathLike, saved_model_dir: str | os.PathLike) -> Path:
    """``onnx_tf.backend.prepare(model).export_graph(dir)`` in a Keras-2 subprocess."""
    saved_model_dir = Path(saved_model_dir).resolve()
    if saved_model_dir.exists():
        shutil.rmtree(saved_model_dir)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "export._onnx_tf_worker", str(onnx_path), str(saved_model_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode or not (saved_model_dir / "saved_model.pb").exists():
        raise RuntimeError(
            f"onnx-tf failed on {onnx_path} (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return saved_model_dir


def convert_with_onnx_tf(
    onnx_path: str | os.PathLike,
    saved_model_dir: str | os.PathLike,
    binary_convs: list[str] | None = None,
) -> Path:
    """Prepare the ONNX graph (see module doc) and convert it with onnx-tf.

    ``binary_convs``: names of the binary Conv nodes (None: every conv fed by a binarizer).
    What the preparation did is written to ``<dir>/facekd_onnx_tf.json``.
    """
    model, prep = prepare_for_onnx_tf(onnx.load(str(onnx_path)), binary_convs)
    saved_model_dir = Path(saved_model_dir)
    saved_model_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facekd-onnx-tf-") as work:
        prepared = Path(work) / "prepared.onnx"
        onnx.save(model, prepared)
        out = run_onnx_tf(prepared, saved_model_dir)
    (out / PREP_FILE).write_text(json.dumps(asdict(prep), indent=2))
    return out


def read_prep(saved_model_dir: str | os.PathLike) -> OnnxTfPrep | None:
    """The preparation notes written by :func:`onnx_tf_convert`, if any."""
    path = Path(saved_model_dir) / PREP_FILE
    return OnnxTfPrep(**json.loads(path.read_text())) if path.exists() else None
