"""What each binarized layer of a student became in the LCE flatbuffer, and why.

Layers are matched to flatbuffer operators by the signs of their weights: ``LceBconv2d``
filters are bit-packed (bit set = -1, 32 input channels per int32 word), binary convolutions
left float keep a +-scale float filter. For a layer left float the operator producing the
conv's input tells why LCE could not fuse it (a transpose, a Mul, a zero pad, a split ...).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from export.tflite import (
    FlatbufferOp,
    bconv_channels_per_group,
    flatbuffer_ops,
    is_binary_filter,
    tensor_value,
)
from students.layers import LCE_GROUP_CHANNELS, BinaryConv2d

BINARY_OP = "LceBconv2d"


@dataclass
class LayerEntry:
    """One binarized layer: its PyTorch name and shape, what it became and why."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    groups: int
    padding: str
    became: str
    op_index: int | None = None
    reason: str | None = None

    @property
    def binary(self) -> bool:
        return self.became == BINARY_OP


def sign_key(signs: np.ndarray) -> str:
    """Hash of the sign pattern of an (O, I, kh, kw) filter (I per group)."""
    return hashlib.sha1(np.packbits(signs.reshape(-1) >= 0).tobytes()).hexdigest()


def unpack_bconv_filter(packed: np.ndarray, channels_in: int) -> np.ndarray:
    """+-1 filter (O, kh, kw, I) of an ``LceBconv2d`` from its bit-packed int32 words."""
    words = packed.astype(np.int64) & 0xFFFFFFFF
    bits = (words[..., None] >> np.arange(32)) & 1
    bits = bits.reshape(*packed.shape[:-1], -1)[..., :channels_in]
    return np.where(bits == 1, -1.0, 1.0)


def _filter_key(op: FlatbufferOp, flatbuffer: bytes) -> str | None:
    """Sign key of a conv operator's filter in PyTorch layout, or None."""
    if op.name == BINARY_OP:
        packed = tensor_value(flatbuffer, op.inputs[1])
        if packed is None:
            return None
        per_group = bconv_channels_per_group(int(op.options["channels_in"]), packed.shape[-1])
        return sign_key(unpack_bconv_filter(packed, per_group).transpose(0, 3, 1, 2))
    if op.filter is not None and is_binary_filter(op.filter):
        # TFLite filters are (O, kh, kw, I) (depthwise: (1, kh, kw, O)); PyTorch (O, I, kh, kw)
        return sign_key(op.filter.transpose(0, 3, 1, 2))
    return None


def _padding(layer: BinaryConv2d) -> str:
    k = layer.conv.kernel_size[0]
    if k == 1:
        return "none"
    return "one" if layer.pad_value == 1.0 else "zero"


def _why_float(
    op: FlatbufferOp, ops: list[FlatbufferOp], flatbuffer: bytes, layer: BinaryConv2d
) -> str:
    """Why LCE left this binary conv float: what sits between the binarizer and the conv."""
    groups = layer.conv.groups
    if groups > 1 and (layer.conv.in_channels // groups) % LCE_GROUP_CHANNELS:
        return (
            f"grouped conv with {layer.conv.in_channels // groups} input channels per group "
            f"(LCE needs a multiple of {LCE_GROUP_CHANNELS})"
        )
    producers = {out: o for o in ops for out in o.outputs}
    source = producers.get(op.inputs[0])
    if source is None:
        return "its input is a graph input, not a binarizer"
    if source.name == "TRANSPOSE":
        return "Transpose between sign and conv (layout change)"
    if source.name == "MUL":
        return "activation scale kept as Mul between sign and conv"
    if source.name in ("PAD", "PADV2"):
        value = tensor_value(flatbuffer, source.inputs[2]) if len(source.inputs) > 2 else None
        if value is None or float(np.asarray(value).reshape(-1)[0]) == 0.0:
            return "zero Pad op between sign and conv (use SAME padding or one-padding)"
        before = producers.get(source.inputs[0])
        if before is not None and before.name in ("SELECT", "SELECT_V2", "LceDequantize"):
            return "binarizer and one-padding feed the conv, yet LCE did not fuse it"
        return f"{before.name if before else 'graph input'} before the one-padding, not a binarizer"
    if source.name in ("SPLIT", "SPLIT_V", "STRIDED_SLICE", "SLICE"):
        return f"{source.name} between sign and conv (grouped conv split per group)"
    if source.name in ("SELECT", "SELECT_V2", "LceDequantize"):
        return "binarizer feeds the conv directly, yet LCE did not fuse it"
    return f"{source.name} between sign and conv"


def layer_table(
    model: nn.Module,
    flatbuffer: bytes,
    notes: dict[str, str] | None = None,
    kept_scales: set[str] | frozenset[str] = frozenset(),
) -> list[LayerEntry]:
    """One entry per binarized ``BinaryConv2d`` of ``model`` (qualified names, in order).

    ``notes``: reasons known from the conversion (e.g. the onnx-tf route's preparation),
    by layer name, used when a layer is not found at all. ``kept_scales``: layers whose
    activation scale the lowering kept as a ``Mul`` (TFLite may fold it into the filter
    afterwards, LCE still sees a scaled binarizer).
    """
    ops = flatbuffer_ops(flatbuffer)
    by_key: dict[str, list[FlatbufferOp]] = {}
    for op in ops:
        if op.name in (BINARY_OP, "CONV_2D", "DEPTHWISE_CONV_2D"):
            key = _filter_key(op, flatbuffer)
            if key is not None:
                by_key.setdefault(key, []).append(op)
    entries = []
    for name, layer in model.named_modules():
        if not (isinstance(layer, BinaryConv2d) and layer.binary):
            continue
        conv = layer.conv
        entry = LayerEntry(
            name,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            conv.groups,
            _padding(layer),
            "not found",
        )
        matches = by_key.get(sign_key(conv.weight.detach().cpu().numpy()), [])
        if matches:
            op = matches.pop(0)
            entry.op_index = op.index
            entry.became = op.name if op.name == BINARY_OP else f"{op.name} (float)"
            if op.name != BINARY_OP and name in kept_scales:
                entry.reason = (
                    "activation scale kept as Mul between sign and conv (the scaled sign "
                    "also feeds a non-conv op, so the lowering could not fold it)"
                )
            elif op.name != BINARY_OP:
                entry.reason = _why_float(op, ops, flatbuffer, layer)
        else:
            entry.reason = (notes or {}).get(name) or (
                "no convolution with this layer's weight signs in the flatbuffer "
                "(split, merged or removed by the converter)"
            )
        entries.append(entry)
    return entries


def layers_json(entries: list[LayerEntry]) -> list[dict[str, Any]]:
    return [asdict(e) for e in entries]


def write_markdown(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """``export_report.md``: the per-layer table, coverage, parity and operator histogram."""
    lines = [
        f"# Export report ({report['converter']})",
        "",
        f"LceBconv2d coverage: **{report['bconv_coverage']:.2f}** "
        f"({sum(1 for e in report['layers'] if e['became'] == BINARY_OP)} of "
        f"{len(report['layers'])} binarized layers)",
        "",
        "| layer | in | out | k | groups | padding | became | why not binary |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for e in report["layers"]:
        lines.append(
            f"| `{e['name']}` | {e['in_channels']} | {e['out_channels']} | {e['kernel']} "
            f"| {e['groups']} | {e['padding']} | {e['became']} | {e['reason'] or ''} |"
        )
    parity = report.get("parity", {})
    if parity:
        lines += [
            "",
            "## Parity on the probe batch",
            "",
            "| runtime | reference | cosine min | max abs diff |",
            "|---|---|---:|---:|",
        ]
        for runtime, p in parity.items():
            cos, diff = p["cosine_min"], p["max_abs_diff"]
            lines.append(f"| {runtime} | {p['reference']} | {cos:.6f} | {diff:.3g} |")
    lines += ["", "## Operators", "", "| operator | LCE model | float twin |", "|---|---:|---:|"]
    names = sorted(set(report["lce_ops"]) | set(report["float_ops"]))
    for n in names:
        lines.append(f"| {n} | {report['lce_ops'].get(n, 0)} | {report['float_ops'].get(n, 0)} |")
    warnings = report.get("lowering", {}).get("warnings", [])
    if warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings]]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
