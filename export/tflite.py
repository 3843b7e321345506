"""SavedModel -> TFLite flatbuffers (LCE binary ops, or plain float) and flatbuffer inspection."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def convert_lce(saved_model_dir: str | os.PathLike, target: str = "arm") -> bytes:
    """Convert with Larq Compute Engine: binarized convs become ``LceBconv2d``."""
    import larq_compute_engine as lce

    return lce.convert_saved_model(str(saved_model_dir), target=target)


def convert_float(saved_model_dir: str | os.PathLike) -> bytes:
    """Convert with the stock TFLite converter (float32, no LCE ops)."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir)).convert()


@dataclass(frozen=True)
class FlatbufferOp:
    """One operator of a TFLite flatbuffer, with its filter when it is a convolution."""

    index: int
    name: str
    filter: np.ndarray | None


def _schema():
    from tensorflow.lite.python import schema_py_generated as schema

    return schema


def flatbuffer_ops(flatbuffer: bytes) -> list[FlatbufferOp]:
    """Operators of the main subgraph in execution order (custom ops by their custom name)."""
    schema = _schema()
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        custom = code.CustomCode()
        codes.append(
            custom.decode()
            if custom
            else builtin[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        )
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = codes[op.OpcodeIndex()]
        filt = None
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and op.InputsLength() > 1:
            tensor = graph.Tensors(op.Inputs(1))
            data = model.Buffers(tensor.Buffer()).DataAsNumpy()
            if tensor.Type() == schema.TensorType.FLOAT32 and not isinstance(data, int):
                filt = np.frombuffer(data.tobytes(), dtype=np.float32).reshape(
                    tensor.ShapeAsNumpy()
                )
        ops.append(FlatbufferOp(i, name, filt))
    return ops


def op_histogram(flatbuffer: bytes) -> dict[str, int]:
    """How many operators of each type the flatbuffer holds."""
    return dict(Counter(op.name for op in flatbuffer_ops(flatbuffer)))


def is_binary_filter(filt: np.ndarray) -> bool:
    """True when every output channel's filter is +-(one constant): a binary conv left float."""
    flat = np.abs(filt.reshape(filt.shape[0], -1))
    return bool(flat.size) and bool(np.allclose(flat, flat[:, :1], rtol=1e-6, atol=0))


def save_flatbuffer(data: bytes, path: str | os.PathLike) -> Path:
    """Write a flatbuffer atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
