"""The export chain for one student: QONNX -> lowering -> ONNX -> TF -> LCE/float TFLite -> report.

Each arrow is a function of its own module; this module strings them together, checks that
every binarized convolution became ``LceBconv2d`` and measures parity against PyTorch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.layer_report import layer_table, layers_json, write_markdown
from export.lowering import lower_bipolar_quant
from export.onnx_export import export_float_onnx, export_qonnx, save_onnx
from export.onnx_tf import read_prep
from export.runtime import TFLiteRunner
from export.tensorflow import CONVERTERS
from export.tflite import (
    convert_float,
    convert_lce,
    flatbuffer_macs,
    op_histogram,
    save_flatbuffer,
)


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
    report_md: str = ""


def _onnx_scope_to_module(node_name: str) -> str:
    """``/stages/stages.0/conv/conv/Conv`` -> ``stages.0.conv`` (the BinaryConv2d's name)."""
    name = ""
    for part in node_name.strip("/").split("/")[:-1]:
        name = part if not name or part.startswith(name + ".") else f"{name}.{part}"
    return name.removesuffix(".conv")


def parity(reference: np.ndarray, got: np.ndarray, against: str) -> dict[str, float | str]:
    """Minimum cosine and maximum absolute difference of two embedding batches."""
    return {
        "reference": against,
        "cosine_min": float(_cosines(reference, got).min()),
        "max_abs_diff": float(np.abs(reference - got).max()),
    }


def _onnx_embed(path: str | os.PathLike, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: batch[i : i + 1]})[0] for i in range(len(batch))])


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

    binary_convs = lowering.binary_convs
    lce_saved = convert(onnx_path, out / "saved_model", binary_convs=binary_convs)
    lce_fb = convert_lce(lce_saved)
    float_fb = convert_float(convert(float_onnx_path, out / "saved_model_float"))
    lce_path = save_flatbuffer(lce_fb, out / "student_lce.tflite")
    float_path = save_flatbuffer(float_fb, out / "student_float.tflite")

    notes = {}
    prep = read_prep(lce_saved)
    if prep is not None:
        notes = {_onnx_scope_to_module(k): f"onnx-tf: {v}" for k, v in prep.skipped.items()}
    kept = {_onnx_scope_to_module(n).split(".act")[0] for n in lowering.kept_scales}
    layers = layer_table(student, lce_fb, notes, kept)
    left = [e.name for e in layers if not e.binary]
    ops = op_histogram(lce_fb)
    n_binary = len(layers)
    n_bconv = sum(e.binary for e in layers)
    coverage = n_bconv / n_binary if n_binary else 1.0

    x = probe.numpy()
    with torch.no_grad():
        ref = student(probe).numpy()
        ref_float = float_twin(probe).numpy()
    checks = {
        "onnx": parity(ref, _onnx_embed(onnx_path, x), "pytorch"),
        "lce": parity(ref, TFLiteRunner(lce_fb, binary=True).embed(x), "pytorch"),
        "onnx_float": parity(ref_float, _onnx_embed(float_onnx_path, x), "pytorch_float"),
        "tflite_float": parity(
            ref_float, TFLiteRunner(float_fb, binary=False).embed(x), "pytorch_float"
        ),
    }
    metrics = {
        "export.bconv_coverage": coverage,
        "export.binary_convs": float(n_binary),
        "export.lce_bconv_ops": float(ops.get("LceBconv2d", 0)),
        **{
            f"export.parity.{runtime}.{key}": float(value)
            for runtime, p in checks.items()
            for key, value in p.items()
            if key != "reference"
        },
        # the names of earlier reports (LCE and ONNX vs PyTorch, float TFLite vs its twin)
        "export.cosine_min": checks["lce"]["cosine_min"],
        "export.max_abs_diff": checks["lce"]["max_abs_diff"],
        "export.onnx_cosine_min": checks["onnx"]["cosine_min"],
        "export.float_cosine_min": checks["tflite_float"]["cosine_min"],
        "model.size_bytes": float(len(lce_fb)),
        "model.float_size_bytes": float(len(float_fb)),
        **{f"model.{k}": float(v) for k, v in flatbuffer_macs(lce_fb).items()},
    }
    report = {
        "converter": converter,
        "bconv_coverage": coverage,
        "layers": layers_json(layers),
        "binary_layers": [e.name for e in layers],
        "float_layers": left,
        "parity": checks,
        "lce_ops": ops,
        "float_ops": op_histogram(float_fb),
        "lowering": asdict(lowering),
        "onnx_tf": asdict(prep) if prep is not None else None,
        "metrics": metrics,
        "probe_images": len(probe),
    }
    report_path = out / "export_report.json"
    tmp = report_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, report_path)
    markdown = write_markdown(report, out / "export_report.md")
    if coverage < 1.0 and not allow_partial:
        why = "; ".join(f"{e.name}: {e.became}, {e.reason}" for e in layers if not e.binary)
        raise CoverageError(
            f"only {n_bconv} of {n_binary} binarized convolutions became LceBconv2d "
            f"(coverage {coverage:.2f}); layers left float: {why}. "
            f"See {markdown}; set export.allow_partial: true to accept."
        )
    return ExportResult(
        str(onnx_path),
        str(lce_path),
        str(float_onnx_path),
        str(float_path),
        str(report_path),
        metrics,
        left,
        str(markdown),
    )
