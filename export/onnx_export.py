"""PyTorch -> ONNX: Brevitas QONNX for binarized students, plain ONNX for float models."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from export.lowering import fold_constants
from faces.transforms import IMAGE_SIZE

OPSET = 17


def _probe(batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 3, IMAGE_SIZE, IMAGE_SIZE)


def export_qonnx(model: nn.Module) -> onnx.ModelProto:
    """Brevitas' QONNX export (1-bit quantizers become ``BipolarQuant`` nodes), batch 1."""
    from brevitas.export import export_qonnx as brevitas_export_qonnx

    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = brevitas_export_qonnx(model, _probe(), export_path=None, dynamo=False)
    return proto


def export_float_onnx(model: nn.Module) -> onnx.ModelProto:
    """Plain ONNX export of a float model (TorchScript exporter, opset 17), batch 1."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (_probe(),),
            buffer,
            opset_version=OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=["embedding"],
        )
    proto = onnx.load_from_string(buffer.getvalue())
    names = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in names]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    return fold_constants(proto)


def save_onnx(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Check and write an ONNX model atomically."""
    path = Path(path)
    onnx.checker.check_model(proto)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    return path
