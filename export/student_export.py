"""The export chain for one student: QONNX -> lowering -> ONNX -> TF -> LCE/float TFLite -> report.

Each arrow is a function of its own module; this module strings them together, checks that
every binarized convolution became ``LceBconv2d`` and measures parity against PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.lowering import lower_bipolar_quant
from export.onnx_export import export_float_onnx, export_qonnx, save_onnx
from export.runtime import TFLiteRunner
from export.tensorflow import CONVERTERS
from export.tflite import (
    convert_float,
    convert_lce,
    flatbuffer_macs,
    flatbuffer_ops,
    is_binary_filter,
    op_histogram,
    save_flatbuffer,
)
from students.layers import BinaryConv2d


class CoverageError(RuntimeError):
    """Some binarized convolutions did not become LceBconv2d."""


@dataclass
class ExportResult:
    """Files written and figures measured by ``export_student``."""

    onnx: str
    lce_tflite: str
    float_onnx: str
    float_tflite: str
    report: str
    metrics: dict[str, float] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)


def _sign_key(weight: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(weight.reshape(-1) >= 0).tobytes()).hexdigest()


def binary_layer_table(model: nn.Module) -> dict[str, str]:
    """Binarized convolutions of ``model`` by qualified name -> hash of their weight signs."""
    table = {}
    for name, m in model.named_modules():
        if isinstance(m, BinaryConv2d) and m.binary:
            w = m.conv.weight.detach().cpu().numpy()
            table[name] = _sign_key(w)
    return table


def unfused_layers(flatbuffer: bytes, table: dict[str, str]) -> list[str]:
    """Names of binarized layers whose filter survives as a float conv in the flatbuffer."""
    by_key = {v: k for k, v in table.items()}
    left = []
    for op in flatbuffer_ops(flatbuffer):
        if op.filter is None or not is_binary_filter(op.filter):
            continue
        # TFLite filters are (O, kh, kw, I) (depthwise: (1, kh, kw, O)); PyTorch (O, I, kh, kw).
        key = _sign_key(op.filter.transpose(0, 3, 1, 2))
        left.append(by_key.get(key, f"{op.name} #{op.index} (unmatched)"))
    return left


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def export_student(
    student: nn.Module,
    float_twin: nn.Module,
    probe: torch.Tensor,
    out_dir: str | os.PathLike,
    converter: str = "onnx2tf",
    allow_partial: bool = False,
) -> ExportResult:
    """Export ``student`` to LCE TFLite and ``float_twin`` to float TFLite, with a report.

    ``probe`` is a normalised float batch (N, 3, 112, 112) of real faces for parity. Raises
    CoverageError listing the layers that stayed float unless ``allow_partial``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    convert = CONVERTERS.get(converter)
    student, float_twin = student.eval(), float_twin.eval()

    lowered, lowering = lower_bipolar_quant(export_qonnx(student))
    onnx_path = save_onnx(lowered, out / "student.onnx")
    float_onnx_path = save_onnx(export_float_onnx(float_twin), out / "student_float.onnx")

    lce_fb = convert_lce(convert(onnx_path, out / "saved_model"))
    float_fb = convert_float(convert(float_onnx_path, out / "saved_model_float"))
    lce_path = save_flatbuffer(lce_fb, out / "student_lce.tflite")
    float_path = save_flatbuffer(float_fb, out / "student_float.tflite")

    table = binary_layer_table(student)
    ops = op_histogram(lce_fb)
    n_binary = len(table)
    n_bconv = ops.get("LceBconv2d", 0)
    left = unfused_layers(lce_fb, table)
    coverage = min(n_bconv, n_binary) / n_binary if n_binary else 1.0

    with torch.no_grad():
        ref = student(probe).numpy()
        ref_float = float_twin(probe).numpy()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = np.concatenate(
        [
            sess.run(None, {sess.get_inputs()[0].name: probe[i : i + 1].numpy()})[0]
            for i in range(len(probe))
        ]
    )
    lce_out = TFLiteRunner(lce_fb, binary=True).embed(probe.numpy())
    float_out = TFLiteRunner(float_fb, binary=False).embed(probe.numpy())
    metrics = {
        "export.bconv_coverage": coverage,
        "export.binary_convs": float(n_binary),
        "export.lce_bconv_ops": float(n_bconv),
        "export.cosine_min": float(_cosines(ref, lce_out).min()),
        "export.max_abs_diff": float(np.abs(ref - lce_out).max()),
        "export.onnx_cosine_min": float(_cosines(ref, onnx_out).min()),
        "export.float_cosine_min": float(_cosines(ref_float, float_out).min()),
        "model.size_bytes": float(len(lce_fb)),
        "model.float_size_bytes": float(len(float_fb)),
        **{f"model.{k}": float(v) for k, v in flatbuffer_macs(lce_fb).items()},
    }
    report = {
        "converter": converter,
        "bconv_coverage": coverage,
        "binary_layers": list(table),
        "float_layers": left,
        "lce_ops": ops,
        "float_ops": op_histogram(float_fb),
        "lowering": asdict(lowering),
        "metrics": metrics,
        "probe_images": len(probe),
    }
    report_path = out / "export_report.json"
    tmp = report_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, report_path)
    if coverage < 1.0 and not allow_partial:
        raise CoverageError(
            f"only {n_bconv} of {n_binary} binarized convolutions became LceBconv2d "
            f"(coverage {coverage:.2f}); layers left float: {', '.join(left) or 'unknown'}. "
            f"See {report_path}; set export.allow_partial: true to accept."
        )
    return ExportResult(
        str(onnx_path),
        str(lce_path),
        str(float_onnx_path),
        str(float_path),
        str(report_path),
        metrics,
        left,
    )
