"""Any model file as an embedding function: what ``facekd eval`` runs.

A model is one of

* a facekd model artifact (``teacher.pt`` / ``student.pt`` of a pipeline run), recognised and
  rebuilt by the ``artifacts`` format the caller passes (``pipelines.core.artifacts``: export/ does
  not import pipelines/);
* a checkpoint: a Lightning checkpoint of a training stage (weights under ``model.``; the
  architecture comes from the stage's model artifact beside it, or from ``arch``/``args``), or a
  plain PyTorch state dict with ``arch``;
* an ``.onnx`` file (ONNX Runtime; NCHW or NHWC input, batch 1 or dynamic);
* a ``.tflite`` flatbuffer (LCE interpreter: indirect BGEMM when it holds ``LceBconv2d`` ops,
  XNNPACK otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faces.evaluate import EmbedFn
from teachers.checkpoint import CheckpointError

__all__ = ["ArtifactFormat", "LoadedModel", "load_embedder"]

TORCH_SUFFIXES = {".pt", ".pth", ".ckpt"}


@dataclass
class LoadedModel:
    """An embedding function and how it was obtained (for the report)."""

    embed: EmbedFn
    format: str  # "facekd artifact", "lightning checkpoint", "state dict", "onnx", "tflite"
    detail: str  # e.g. "teacher mobilefacenet", "LCE (indirect BGEMM)"


@dataclass(frozen=True)
class ArtifactFormat:
    """A model artifact format: the ``format`` value of its payload and how to rebuild one
    (``load(path) -> (model, metadata with kind/arch/args)``)."""

    name: str
    load: Callable[[Path], tuple[Any, dict[str, Any]]]


# -- PyTorch models --------------------------------------------------------------------------
def _build(arch: str, args: dict[str, Any]) -> tuple[Any, str]:
    """A registered teacher or student ``arch`` built with ``args``; returns (model, kind)."""
    from students.registry import STUDENTS, create_student
    from teachers.registry import TEACHERS, create_teacher

    try:
        if arch in TEACHERS:
            return create_teacher(arch, **args), "teacher"
        if arch in STUDENTS:
            return create_student(arch, **args), "student"
    except TypeError as exc:
        raise CheckpointError(f"cannot build {arch} with args {args}: {exc}") from exc
    known = ", ".join(TEACHERS.names() + STUDENTS.names())
    raise CheckpointError(f"unknown architecture {arch!r}; known: {known}")


def _artifact_meta(path: Path, artifacts: ArtifactFormat | None) -> dict[str, Any] | None:
    """kind/arch/args of a facekd model artifact, or None when ``path`` is not one."""
    import torch

    if artifacts is None:
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not an artifact
        return None
    if isinstance(payload, dict) and payload.get("format") == artifacts.name:
        return {k: payload[k] for k in ("kind", "arch", "args")}
    return None


def _stage_artifact(ckpt: Path, artifacts: ArtifactFormat | None) -> tuple[Path, dict[str, Any]]:
    """The model artifact of the stage a Lightning checkpoint belongs to."""
    stage_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    found = [(p, m) for p in sorted(stage_dir.glob("*.pt")) if (m := _artifact_meta(p, artifacts))]
    if len(found) != 1:
        what = "no model artifact" if not found else f"{len(found)} model artifacts"
        raise CheckpointError(
            f"cannot tell the architecture of {ckpt}: {what} (teacher.pt / student.pt) in "
            f"{stage_dir}; pass --arch NAME and --args JSON"
        )
    return found[0]


def _load_torch(
    path: Path, arch: str | None, args: dict[str, Any], artifacts: ArtifactFormat | None
) -> LoadedModel:
    import torch

    from faces.evaluate import torch_embed_fn
    from teachers.checkpoint import load_checkpoint_into, read_state_dict

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"{path} is not a loadable PyTorch file: {exc}") from exc
    if artifacts is not None and isinstance(obj, dict) and obj.get("format") == artifacts.name:
        if arch is not None:
            raise CheckpointError(
                f"{path} is a facekd model artifact: it names its architecture, drop --arch"
            )
        try:
            model, meta = artifacts.load(path)
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(str(exc).strip("\"'")) from exc
        return LoadedModel(
            torch_embed_fn(model), "facekd artifact", f"{meta['kind']} {meta['arch']}"
        )
    lightning = (
        isinstance(obj, dict)
        and "pytorch-lightning_version" in obj
        and isinstance(obj.get("state_dict"), dict)
    )
    if lightning:
        state = {
            k[len("model.") :]: v
            for k, v in obj["state_dict"].items()
            if k.startswith("model.") and torch.is_tensor(v)
        }
        if not state:
            raise CheckpointError(f"{path} is a Lightning checkpoint without model.* weights")
        fmt = "lightning checkpoint"
        if arch is None:
            artifact, meta = _stage_artifact(path, artifacts)
            arch, args = meta["arch"], dict(meta["args"])
            fmt += f" (architecture from {artifact.name})"
    else:
        if arch is None:
            raise CheckpointError(
                f"{path} is a plain state dict: pass --arch NAME (and --args JSON) to say "
                "which architecture it fits"
            )
        state = read_state_dict(path)
        fmt = "state dict"
    model, kind = _build(arch, args)
    load_checkpoint_into(model, state, name=str(path))
    return LoadedModel(torch_embed_fn(model.eval()), fmt, f"{kind} {arch}")


# -- ONNX and TFLite -------------------------------------------------------------------------
def _load_onnx(path: Path, threads: int | None) -> LoadedModel:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise CheckpointError(f"{path} is not a loadable ONNX model: {exc}") from exc
    inp = sess.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4:
        raise CheckpointError(f"{path}: expected a 4-D image input, the model has {shape}")
    if shape[1] == 3:
        nhwc = False
    elif shape[3] == 3:
        nhwc = True
    else:
        raise CheckpointError(f"{path}: expected 3 channels (NCHW or NHWC), input is {shape}")
    spatial = shape[1:3] if nhwc else shape[2:4]
    if any(isinstance(d, int) and d != 112 for d in spatial):
        raise CheckpointError(f"{path}: expected 112x112 input, the model takes {shape}")
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def embed(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch.transpose(0, 2, 3, 1) if nhwc else batch, np.float32)
        if fixed is None:
            return np.asarray(sess.run(None, {inp.name: x})[0]).reshape(len(x), -1)
        out = []
        for start in range(0, len(x), fixed):
            chunk = x[start : start + fixed]
            n = len(chunk)
            if n < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), np.float32)])
            out.append(np.asarray(sess.run(None, {inp.name: chunk})[0]).reshape(fixed, -1)[:n])
        return np.concatenate(out)

    batch = "dynamic batch" if fixed is None else f"batch {fixed}"
    return LoadedModel(embed, "onnx", f"ONNX Runtime, {'NHWC' if nhwc else 'NCHW'}, {batch}")


def _load_tflite(path: Path, threads: int | None) -> LoadedModel:
    from export.runtime import TFLiteRunner
    from export.tflite import op_histogram

    data = path.read_bytes()
    try:
        ops = op_histogram(data)
    except Exception as exc:  # noqa: BLE001 - flatbuffers raise struct/index errors
        raise CheckpointError(f"{path} is not a TFLite flatbuffer: {exc}") from exc
    # LCE's indirect BGEMM kernels are needed for LceBconv2d; a float model runs with them off
    # too, but XNNPACK (as the pipeline's float twin uses) is the fast path for it.
    binary = any(name.startswith("LceBconv2d") for name in ops)
    try:
        # 1 thread by default, as the pipeline measures: batch-1 inference of these small models
        # gains nothing from more, and on a busy machine extra threads can be 100x slower.
        runner = TFLiteRunner(data, threads=threads or 1, binary=binary)
    except Exception as exc:  # noqa: BLE001 - the interpreter raises RuntimeError/ValueError
        raise CheckpointError(f"{path}: cannot run in the LCE interpreter: {exc}") from exc
    precision = "int8" if "QUANTIZE" in ops else "float"  # full-integer models quantize input
    detail = (
        "LCE interpreter, indirect BGEMM" if binary else f"LCE interpreter, XNNPACK ({precision})"
    )
    return LoadedModel(runner.embed, "tflite", f"{detail}, {ops.get('LceBconv2d', 0)} LceBconv2d")


def load_embedder(
    model: str | os.PathLike,
    *,
    arch: str | None = None,
    args: dict[str, Any] | None = None,
    threads: int | None = None,
    artifacts: ArtifactFormat | None = None,
) -> LoadedModel:
    """An embedding function for a model file (artifact, checkpoint, ONNX or TFLite); model
    artifacts are recognised in the ``artifacts`` format (none without it)."""
    path = Path(model)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if arch is None and args:
        raise CheckpointError("--args goes with --arch")
    if suffix in TORCH_SUFFIXES:
        return _load_torch(path, arch, dict(args or {}), artifacts)
    if arch is not None:
        raise CheckpointError(f"--arch applies to PyTorch checkpoints, not to {path.name}")
    if suffix == ".onnx":
        return _load_onnx(path, threads)
    if suffix == ".tflite":
        return _load_tflite(path, threads)
    raise CheckpointError(
        f"{path}: unknown model format {suffix or '(no suffix)'}; expected .pt, .pth, .ckpt, "
        ".onnx or .tflite"
    )
