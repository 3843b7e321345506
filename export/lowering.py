"""Lower Brevitas' QONNX ``BipolarQuant`` nodes into plain ONNX that LCE can fuse.

* weights: ``BipolarQuant(W, s)`` with constant W -> constant ``where(W >= 0, 1, -1) * s``
  (+-scale per tensor or per output channel);
* activations: ``BipolarQuant(x, s)`` -> ``Where(GreaterOrEqual(x, 0), 1, -1)``; a scale
  s != 1 is folded into the filters of the convolutions that consume it (through an optional
  constant ``Pad``), or kept as a ``Mul`` when a consumer is not a convolution;
* then constant subgraphs (e.g. the shape arithmetic the exporter emits for ``Pad``) are
  folded, initializers are removed from the graph inputs and the QONNX opset is dropped;
* a per-channel constant added to or subtracted from a binary conv's output (RPReLU's
  ``x - gamma`` straight after a conv, as in QuickNet's blocks) becomes that conv's bias:
  LCE's converter fuses such an Add/Sub into ``LceBconv2d``'s post-activation bias without
  checking its shape, and the (1, 1, 1, C) constant of an NHWC graph then makes the
  interpreter refuse the model ("NumDimensions(post_activation_bias) != 1"); a 1-D conv bias
  is what it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

QONNX_DOMAINS = {"qonnx.custom_op.general", "finn.custom_op.general"}


class LoweringError(ValueError):
    """The QONNX graph holds something the lowering pass cannot turn into LCE-ready ONNX."""


@dataclass
class LoweringReport:
    """What the pass did, for the export report."""

    binary_weights: list[str] = field(default_factory=list)
    binary_activations: list[str] = field(default_factory=list)
    folded_scales: list[str] = field(default_factory=list)
    kept_scales: list[str] = field(default_factory=list)
    binary_convs: list[str] = field(default_factory=list)
    folded_biases: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def lower_bipolar_quant(model: onnx.ModelProto) -> tuple[onnx.ModelProto, LoweringReport]:
    """Return an LCE-ready copy of ``model`` and a report of what was lowered."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    report = LoweringReport()
    inits = {t.name: t for t in graph.initializer}
    const_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def constant(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in const_nodes:
            return numpy_helper.to_array(const_nodes[name].attribute[0].t)
        return None

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    graph.initializer.extend(
        [_const("facekd_zero", 0.0), _const("facekd_one", 1.0), _const("facekd_minus_one", -1.0)]
    )
    new_nodes: list[onnx.NodeProto] = []
    pending_scale: dict[str, np.ndarray] = {}  # binary activation output -> its scale
    for node in graph.node:
        if node.domain in QONNX_DOMAINS and node.op_type != "BipolarQuant":
            raise LoweringError(
                f"QONNX node {node.name or node.op_type} ({node.op_type}) is not "
                "a 1-bit quantizer; only BipolarQuant can be lowered for LCE"
            )
        if node.op_type != "BipolarQuant":
            new_nodes.append(node)
            continue
        x, s = node.input[0], node.input[1]
        scale = constant(s)
        if scale is None:
            raise LoweringError(f"BipolarQuant {node.name}: scale {s!r} is not a constant")
        weight = constant(x)
        out = node.output[0]
        if weight is not None:
            q = np.where(weight >= 0, 1.0, -1.0) * scale
            graph.initializer.append(_const(out, q))
            report.binary_weights.append(out)
            continue
        if scale.size != 1:
            raise LoweringError(
                f"BipolarQuant {node.name}: per-channel activation scales "
                "cannot be folded into LCE binary convolutions"
            )
        sign_out = out if float(scale) == 1.0 else out + "_sign"
        ge = out + "_ge"
        base = node.name or out
        new_nodes.append(
            helper.make_node("GreaterOrEqual", [x, "facekd_zero"], [ge], name=base + "_ge")
        )
        new_nodes.append(
            helper.make_node(
                "Where", [ge, "facekd_one", "facekd_minus_one"], [sign_out], name=base + "_sign"
            )
        )
        report.binary_activations.append(out)
        if float(scale) != 1.0:
            pending_scale[out] = scale.reshape(())
            new_nodes.append(helper.make_node("Identity", [sign_out], [out], name=base + "_scale"))

    del graph.node[:]
    graph.node.extend(new_nodes)
    _fold_activation_scales(model, pending_scale, report)
    _record_binary_convs(model, report)

    names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    opsets = [o for o in model.opset_import if o.domain not in QONNX_DOMAINS]
    del model.opset_import[:]
    model.opset_import.extend(opsets)

    model = fold_constants(model)
    _fold_channel_constants_into_binary_convs(model, report)
    _check_strided_padding(model, report)
    onnx.checker.check_model(model)
    return model, report


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs (e.g. the exporter's shape arithmetic for ``Pad``) and tidy up."""
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    folded = gs.export_onnx(graph)
    folded.ir_version = min(folded.ir_version, 8)
    return folded


def _fold_activation_scales(
    model: onnx.ModelProto, scales: dict[str, np.ndarray], report: LoweringReport
) -> None:
    """Fold each activation scale into the filters of the convolutions that consume it."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    for out, scale in scales.items():
        identity = next(n for n in graph.node if n.op_type == "Identity" and n.output[0] == out)
        convs = []
        for user in by_input.get(out, []):
            target = user
            if user.op_type == "Pad":
                nxt = by_input.get(user.output[0], [])
                target = nxt[0] if len(nxt) == 1 else user
            ok = target.op_type == "Conv" and len(target.input) > 1 and target.input[1] in inits
            convs.append(target if ok else None)
        if convs and all(c is not None for c in convs):
            for conv in convs:
                w = numpy_helper.to_array(inits[conv.input[1]]) * scale
                inits[conv.input[1]].CopyFrom(_const(conv.input[1], w))
            identity.op_type = "Identity"
            report.folded_scales.append(out)
        else:
            name = out + "_scale_value"
            graph.initializer.append(_const(name, scale))
            identity.op_type = "Mul"
            identity.input.append(name)
            report.kept_scales.append(out)


def _record_binary_convs(model: onnx.ModelProto, report: LoweringReport) -> None:
    """Names of the convolutions whose filter is a lowered binary weight."""
    weights = set(report.binary_weights)
    report.binary_convs = [
        n.name or n.output[0]
        for n in model.graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in weights
    ]


def _fold_channel_constants_into_binary_convs(
    model: onnx.ModelProto, report: LoweringReport
) -> None:
    """``Add(conv, c)`` / ``Sub(conv, c)`` of a binary conv's only consumer and a constant c of
    one value per output channel (or one in all) -> the conv with bias ``+-c`` (exact)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    binary = set(report.binary_convs)
    producer = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    removed = []
    for node in graph.node:
        if node.op_type not in ("Add", "Sub") or len(node.input) != 2:
            continue
        x, c = node.input
        if node.op_type == "Add" and c not in inits:
            x, c = c, x
        conv = producer.get(x)
        if conv is None or conv.op_type != "Conv" or (conv.name or conv.output[0]) not in binary:
            continue
        if uses.get(x, 0) != 1 or x in outputs or c not in inits:
            continue
        value = numpy_helper.to_array(inits[c]).astype(np.float32)
        out_channels = numpy_helper.to_array(inits[conv.input[1]]).shape[0]
        channel_shape = value.ndim in (3, 4) and value.shape[-3] == value.size == out_channels
        if value.size != 1 and not channel_shape:
            continue  # not one value per channel of an NCHW map (e.g. it varies along W)
        bias = np.broadcast_to(value.reshape(-1), (out_channels,))
        if node.op_type == "Sub":
            bias = -bias
        if len(conv.input) > 2 and conv.input[2]:
            bias = bias + numpy_helper.to_array(inits[conv.input[2]])
        name = f"{conv.name or conv.output[0]}_folded_bias"
        graph.initializer.append(_const(name, bias))
        inits[name] = graph.initializer[-1]
        del conv.input[2:]
        conv.input.append(name)
        conv.output[0] = node.output[0]
        removed.append(node)
        report.folded_biases.append(node.name or node.output[0])
    for node in removed:
        graph.node.remove(node)


def _check_strided_padding(model: onnx.ModelProto, report: LoweringReport) -> None:
    """Warn about strided convs with symmetric padding: LCE's converter re-pads them as SAME."""
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        strides = attrs.get("strides", [1, 1])
        pads = attrs.get("pads", [0, 0, 0, 0])
        if max(strides) > 1 and any(pads):
            report.warnings.append(
                f"{n.name}: stride {strides} with pads {pads}; LCE's converter rewrites explicit "
                "padding of strided convolutions as SAME (extra pixel bottom/right only), so "
                "outputs would differ: pad strided layers the SAME way "
                "(students.layers.SamePadConv2d)"
            )


def splits_to_slices(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace ``Split`` nodes with constant split sizes by one ``Slice`` per output.

    onnx2tf turns a Split of uneven parts (EdgeNeXt splits 88 channels as 30/30/28) into
    strided slices of equal size whose last end lies past the channel count; TFLite clamps
    it, but XNNPACK refuses the node and the whole model silently falls back to the slow
    reference kernels. Exact Slice bounds keep the graph on XNNPACK. Returns (model, count).
    """
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    nodes: list[onnx.NodeProto] = []
    new_init: list[onnx.TensorProto] = []
    replaced = 0
    for node in model.graph.node:
        sizes = None
        if node.op_type == "Split":
            if len(node.input) > 1 and node.input[1]:
                sizes = init.get(node.input[1], consts.get(node.input[1]))
            else:
                attr = next((a for a in node.attribute if a.name == "split"), None)
                sizes = np.array(attr.ints) if attr is not None else None
        if sizes is None:
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        start = 0
        for i, (out, size) in enumerate(zip(node.output, np.asarray(sizes).tolist(), strict=True)):
            prefix = f"{node.name or node.output[0]}_slice{i}"
            for suffix, value in (("starts", start), ("ends", start + size), ("axes", axis)):
                new_init.append(
                    numpy_helper.from_array(np.array([value], dtype=np.int64), f"{prefix}_{suffix}")
                )
            nodes.append(
                helper.make_node(
                    "Slice",
                    [node.input[0], f"{prefix}_starts", f"{prefix}_ends", f"{prefix}_axes"],
                    [out],
                    name=prefix,
                )
            )
            start += size
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_init)
    return model, replaced


def clamp_slice_ends(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Clamp constant ``Slice`` ends to the sliced dimension (shapes must be static).

    ``x.chunk(3, dim=1)`` on 88 channels exports a last slice ending at 90: valid ONNX, but the
    TFLite ``STRIDED_SLICE`` it becomes is refused by XNNPACK, which then drops the whole
    graph to reference kernels. Run after :func:`fold_constants`. Returns (model, count).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    init = {t.name: t for t in model.graph.initializer}
    clamped = 0
    for node in model.graph.node:
        if node.op_type != "Slice" or len(node.input) < 4:
            continue
        shape = shapes.get(node.input[0])
        ends_t, axes_t = init.get(node.input[2]), init.get(node.input[3])
        if shape is None or ends_t is None or axes_t is None:
            continue
        ends = numpy_helper.to_array(ends_t).copy()
        axes = numpy_helper.to_array(axes_t)
        changed = False
        for i, axis in enumerate(axes.tolist()):
            dim = shape[axis]
            if dim is not None and ends[i] > dim:
                ends[i] = dim
                changed = True
        if changed:
            name = f"{node.input[2]}_clamped_{clamped}"
            model.graph.initializer.append(numpy_helper.from_array(ends.astype(np.int64), name))
            node.input[2] = name
            clamped += 1
    return model, clamped
