"""SavedModel -> TFLite flatbuffers (LCE binary ops, or plain float) and flatbuffer inspection."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
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


def convert_int8(saved_model_dir: str | os.PathLike, calibration: np.ndarray) -> bytes:
    """Post-training full-integer quantization (int8 weights and activations, float I/O).

    ``calibration``: normalised float images (N, 3, H, W) of real aligned faces, fed one at
    a time in the SavedModel's own layout (NHWC or NCHW) as the representative dataset.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    signature = loaded.signatures["serving_default"]
    shape = next(iter(signature.structured_input_signature[1].values())).shape
    images = calibration if shape[1] == 3 else calibration.transpose(0, 2, 3, 1)
    images = np.ascontiguousarray(images, dtype=np.float32)

    def representative() -> object:
        for image in images:
            yield [image[None]]

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


@dataclass(frozen=True)
class FlatbufferOp:
    """One operator of a TFLite flatbuffer, with its filter when it is a convolution."""

    index: int
    name: str
    filter: np.ndarray | None
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    options: dict = field(default_factory=dict, compare=False)  # custom ops' options


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
        inputs = tuple(int(op.Inputs(j)) for j in range(op.InputsLength()))
        outputs = tuple(int(op.Outputs(j)) for j in range(op.OutputsLength()))
        options = _custom_options(op) if name.startswith("Lce") else {}
        ops.append(FlatbufferOp(i, name, filt, inputs, outputs, options))
    return ops


def tensor_value(flatbuffer: bytes, index: int) -> np.ndarray | None:
    """The constant data of tensor ``index`` of the main subgraph (None if not a constant)."""
    schema = _schema()
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    tensor = model.Subgraphs(0).Tensors(index)
    data = model.Buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(data, int) or not len(data):
        return None
    dtypes = {
        schema.TensorType.FLOAT32: np.float32,
        schema.TensorType.INT32: np.int32,
        schema.TensorType.INT64: np.int64,
        schema.TensorType.INT8: np.int8,
    }
    dtype = dtypes.get(tensor.Type())
    if dtype is None:
        return None
    return np.frombuffer(data.tobytes(), dtype=dtype).reshape(tensor.ShapeAsNumpy())


def bconv_channels_per_group(channels_in: int, words: int) -> int:
    """Input channels per group of an ``LceBconv2d`` (its options hold no group count).

    The filter packs each group's input channels into ``words`` int32 words; grouped binary
    convs have a multiple of 32 channels per group, ungrouped ones any number.
    """
    return min(channels_in, 32 * words)


MAC_OPS = ("LceBconv2d", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")


def _custom_options(op: object) -> dict:
    from flatbuffers import flexbuffers

    raw = op.CustomOptionsAsNumpy()
    if isinstance(raw, int) or not len(raw):
        return {}
    try:
        value = flexbuffers.Loads(raw.tobytes())
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def flatbuffer_macs(flatbuffer: bytes) -> dict[str, int]:
    """Multiply-accumulates of one inference as stored: ``binary_macs`` and ``float_macs``.

    1-bit: ``LceBconv2d`` (output pixels x output channels x kernel area x input channels per
    group). 32-bit: ``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED`` and
    ``BATCH_MATMUL``; element-wise ops (add, PReLU, BatchNorm folded as mul/add) are not MACs.
    """
    schema = _schema()
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    graph = model.Subgraphs(0)
    names = [op.name for op in flatbuffer_ops(flatbuffer)]

    def shape(op: object, i: int, output: bool = False) -> tuple[int, ...]:
        index = op.Outputs(i) if output else op.Inputs(i)
        return tuple(int(d) for d in graph.Tensors(index).ShapeAsNumpy())

    binary = floating = 0
    for i, name in enumerate(names):
        op = graph.Operators(i)
        if name not in MAC_OPS:
            continue
        out = shape(op, 0, output=True)
        pixels_channels = int(np.prod(out))
        if name == "LceBconv2d":
            # the output may be bit-packed (the next binary conv's sign fused in): count
            # output channels from the filter
            cout, kh, kw, words = shape(op, 1)
            per_group = bconv_channels_per_group(int(_custom_options(op)["channels_in"]), words)
            binary += int(np.prod(out[:-1])) * cout * kh * kw * per_group
        elif name == "CONV_2D":
            _, kh, kw, cin = shape(op, 1)
            floating += pixels_channels * kh * kw * cin
        elif name == "DEPTHWISE_CONV_2D":
            _, kh, kw, _ = shape(op, 1)
            floating += pixels_channels * kh * kw
        elif name == "FULLY_CONNECTED":
            floating += pixels_channels * shape(op, 1)[-1]
        else:  # BATCH_MATMUL: (..., M, K) x (..., K, N)
            floating += pixels_channels * shape(op, 0)[-1]
    return {"binary_macs": binary, "float_macs": floating}


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
