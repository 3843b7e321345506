"""A float teacher to ONNX and float TFLite, checked against PyTorch, so its speed and accuracy
can be set beside the students'."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.lowering import clamp_slice_ends, splits_to_slices
from export.onnx_export import export_float_onnx, save_onnx
from export.tensorflow import CONVERTERS
from export.tflite import convert_float, save_flatbuffer


@dataclass
class TeacherExport:
    onnx: Path
    tflite: Path
    onnx_cosine_min: float
    tflite_cosine_min: float


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim: static shapes folded into constants (the exporter computes slice bounds)."""
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified teacher graph")
    return simplified


def tanh_gelu(model: nn.Module) -> nn.Module:
    """Exact (erf) GELUs -> tanh approximation: TFLite has no Erf op (max error ~1e-3)."""
    for name, child in model.named_children():
        if isinstance(child, nn.GELU) and child.approximate == "none":
            setattr(model, name, nn.GELU(approximate="tanh"))
        else:
            tanh_gelu(child)
    return model


def export_teacher(
    model: nn.Module,
    out_dir: str | os.PathLike,
    converter: str = "onnx2tf",
    probe: torch.Tensor | None = None,
) -> TeacherExport:
    """Write ``teacher.onnx`` and ``teacher_float.tflite``; report cosine parity with PyTorch."""
    import onnxruntime as ort

    from export.runtime import TFLiteRunner

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    onnx_path = save_onnx(export_float_onnx(model), out / "teacher.onnx")
    tflite_model = tanh_gelu(copy.deepcopy(model))
    # signature defs: timm graphs hold names TF's SavedModel writer rejects otherwise
    sliced, _ = splits_to_slices(simplify(export_float_onnx(tflite_model)))
    sliced, _ = clamp_slice_ends(sliced)
    tflite_onnx = save_onnx(sliced, out / "teacher_tflite.onnx")
    saved = CONVERTERS.get(converter)(
        tflite_onnx, out / "saved_model_teacher", output_signaturedefs=True
    )
    tflite_path = save_flatbuffer(convert_float(saved), out / "teacher_float.tflite")
    if probe is None:
        probe = torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(probe).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    onnx_out = np.concatenate([sess.run(None, {name: x[None].numpy()})[0] for x in probe])
    tfl_out = TFLiteRunner(tflite_path.read_bytes(), binary=False).embed(probe.numpy())
    return TeacherExport(
        onnx_path,
        tflite_path,
        float(_cosines(ref, onnx_out).min()),
        float(_cosines(ref, tfl_out).min()),
    )
