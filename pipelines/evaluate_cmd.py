"""``facekd eval MODEL --data DATA``: verification accuracy of any model on any verification set.

MODEL is one of

* a facekd model artifact (``teacher.pt`` / ``student.pt`` of a pipeline run);
* a checkpoint: a Lightning checkpoint of a training stage
  (``runs/<pipeline>/<stage>/checkpoints/last.ckpt``, weights under ``model.``; the architecture
  comes from the stage's model artifact beside it, or from ``--arch``/``--args``), or a plain
  PyTorch state dict with ``--arch`` (e.g. the pretrained MobileFaceNet ``.ckpt``);
* an ``.onnx`` file (ONNX Runtime; NCHW or NHWC input, batch 1 or dynamic);
* a ``.tflite`` flatbuffer (LCE interpreter: indirect BGEMM when it holds ``LceBconv2d`` ops,
  XNNPACK otherwise).

DATA is an InsightFace ``.bin``, an LFW-layout folder with ``--pairs pairs.txt``, or an
ImageFolder (balanced pairs with a fixed seed, as the pipeline's evaluation makes them). Images
are normalised as ``(x - 127.5) / 128`` and embedded with their horizontal flip, like
everywhere in facekd.

``--reference MODEL2`` also runs a second model on the same images and pairs (typically the
PyTorch ``student.pt`` beside its exported ``student_lce.tflite``) and reports the accuracy
delta (MODEL minus MODEL2, points) and the cosine between the two models' embeddings of every
image. ``--noise-draws N`` measures the floor under such a delta: the accuracy change of the
reference (or of MODEL without one) when its input is scaled by ``1 + 1e-6 * N(0, 1)``, one
value per draw. A 1-bit network flips activations that sit at zero under float rounding of
that size, so any runtime with another summation order moves its accuracy as far; on too few
pairs that alone can exceed a tenth of a point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faces.data import FaceDataError
from faces.evaluate import EmbedFn
from teachers.checkpoint import CheckpointError

__all__ = ["LoadedModel", "add_eval_parser", "compare", "evaluate", "load_embedder", "run_eval"]

TORCH_SUFFIXES = {".pt", ".pth", ".ckpt"}


@dataclass
class LoadedModel:
    """An embedding function and how it was obtained (for the report)."""

    embed: EmbedFn
    format: str  # "facekd artifact", "lightning checkpoint", "state dict", "onnx", "tflite"
    detail: str  # e.g. "teacher mobilefacenet", "LCE (indirect BGEMM)"


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


def _artifact_meta(path: Path) -> dict[str, Any] | None:
    """kind/arch/args of a facekd model artifact, or None when ``path`` is not one."""
    import torch

    from pipelines.artifacts import FORMAT

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not an artifact
        return None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return {k: payload[k] for k in ("kind", "arch", "args")}
    return None


def _stage_artifact(ckpt: Path) -> tuple[Path, dict[str, Any]]:
    """The model artifact of the stage a Lightning checkpoint belongs to."""
    stage_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    found = [(p, m) for p in sorted(stage_dir.glob("*.pt")) if (m := _artifact_meta(p))]
    if len(found) != 1:
        what = "no model artifact" if not found else f"{len(found)} model artifacts"
        raise CheckpointError(
            f"cannot tell the architecture of {ckpt}: {what} (teacher.pt / student.pt) in "
            f"{stage_dir}; pass --arch NAME and --args JSON"
        )
    return found[0]


def _load_torch(path: Path, arch: str | None, args: dict[str, Any]) -> LoadedModel:
    import torch

    from faces.evaluate import torch_embed_fn
    from pipelines.artifacts import FORMAT, load_model
    from teachers.checkpoint import load_checkpoint_into, read_state_dict

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"{path} is not a loadable PyTorch file: {exc}") from exc
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if arch is not None:
            raise CheckpointError(
                f"{path} is a facekd model artifact: it names its architecture, drop --arch"
            )
        try:
            model, meta = load_model(path)
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
            artifact, meta = _stage_artifact(path)
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
    detail = "LCE interpreter, indirect BGEMM" if binary else "LCE interpreter, XNNPACK (float)"
    return LoadedModel(runner.embed, "tflite", f"{detail}, {ops.get('LceBconv2d', 0)} LceBconv2d")


def load_embedder(
    model: str | os.PathLike,
    *,
    arch: str | None = None,
    args: dict[str, Any] | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """An embedding function for a model file (artifact, checkpoint, ONNX or TFLite)."""
    path = Path(model)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if arch is None and args:
        raise CheckpointError("--args goes with --arch")
    if suffix in TORCH_SUFFIXES:
        return _load_torch(path, arch, dict(args or {}))
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


# -- the command -----------------------------------------------------------------------------
def evaluate(
    model: LoadedModel, images: Any, pairs: np.ndarray, name: str, batch_size: int = 64
) -> dict[str, float]:
    """``verify.<name>.*`` metrics of a loaded model on a set's images and pairs."""
    from faces.evaluate import pair_embeddings, scores_of

    return _metrics(
        scores_of(*pair_embeddings(model.embed, images, pairs, batch_size)), pairs, name
    )


def _metrics(scores: np.ndarray, pairs: np.ndarray, name: str) -> dict[str, float]:
    from faces.evaluate import verify_metrics

    try:
        return verify_metrics(scores, pairs[:, 2], name)
    except ValueError as exc:
        raise FaceDataError(f"{name}: cannot run the verification protocol: {exc}") from exc


NOISE_RELATIVE = 1e-6
"""Relative input perturbation of ``--noise-draws``: float32 rounding's order of magnitude."""


def compare(
    model: LoadedModel,
    reference: LoadedModel | None,
    images: Any,
    pairs: np.ndarray,
    name: str,
    noise_draws: int = 0,
    batch_size: int = 64,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of ``model``; with a ``reference``, its accuracy and the delta (pt) and the
    per-image embedding cosines between the two; with ``noise_draws``, the accuracy deltas
    (pt) of the reference (else of ``model``) on inputs perturbed by 1e-6 relative noise.

    Returns (metrics, details): metrics are ``verify.<name>.*`` floats for tracking; details
    hold the lists (noise deltas per draw) and what was compared.
    """
    from faces.evaluate import pair_embeddings, perturbed_embed_fn, scores_of

    emb, where = pair_embeddings(model.embed, images, pairs, batch_size)
    metrics = _metrics(scores_of(emb, where), pairs, name)
    key = f"verify.{name}"
    details: dict[str, Any] = {}
    base, base_acc = model, metrics[f"{key}.acc"]
    if reference is not None:
        ref_emb, _ = pair_embeddings(reference.embed, images, pairs, batch_size)
        if ref_emb.shape != emb.shape:
            raise CheckpointError(
                f"the reference's embeddings are {ref_emb.shape[1] // 2}-d, the model's "
                f"{emb.shape[1] // 2}-d: they cannot be compared"
            )
        ref_acc = _metrics(scores_of(ref_emb, where), pairs, name)[f"{key}.acc"]
        cosines = (emb.astype(np.float64) * ref_emb).sum(1)  # rows are L2-normalised
        metrics[f"{key}.acc_reference"] = ref_acc
        metrics[f"{key}.acc_delta_pt"] = 100 * (metrics[f"{key}.acc"] - ref_acc)
        metrics["parity.cosine_min"] = float(cosines.min())
        metrics["parity.cosine_median"] = float(np.median(cosines))
        metrics["parity.share_cosine_099"] = float((cosines >= 0.99).mean())
        base, base_acc = reference, ref_acc
    if noise_draws:
        deltas = []
        for k in range(noise_draws):
            noisy = perturbed_embed_fn(base.embed, NOISE_RELATIVE, seed=k)
            acc = _metrics(
                scores_of(pair_embeddings(noisy, images, pairs, batch_size)[0], where), pairs, name
            )[f"{key}.acc"]
            deltas.append(100 * (acc - base_acc))
        metrics[f"{key}.noise_delta_pt_max"] = float(np.max(np.abs(deltas)))
        details["noise_of"] = "reference" if reference is not None else "model"
        details["noise_deltas_pt"] = deltas
    return metrics, details


def _format_table(report: dict[str, Any]) -> str:
    m = report["metrics"]
    key = f"verify.{report['set']}"
    lines = [
        f"model  {report['model']}  [{report['model_format']}: {report['model_detail']}]",
        f"data   {report['data']}  [{report['set']}: {report['n_images']} images, "
        f"{report['n_pairs']} pairs, {report['n_genuine']} genuine]",
        "",
        f"{'metric':<36} value",
    ]
    for k, v in m.items():
        if k == f"{key}.acc":
            value = f"{v:.4f} +- {m.get(f'{key}.acc_std', 0.0):.4f}"
        elif k.endswith(".n_pairs"):
            value = f"{v:.0f}"
        elif k.endswith("_pt") or k.endswith("_pt_max"):
            value = f"{v:+.2f}" if k.endswith("_pt") else f"{v:.2f}"
        else:
            value = f"{v:.4f}"
        lines.append(f"{k:<36} {value}")
    if "reference" in report:
        ref = report["reference"]
        lines.insert(2, f"ref    {ref['model']}  [{ref['model_format']}: {ref['model_detail']}]")
    if "noise_deltas_pt" in report:
        draws = ", ".join(f"{d:+.2f}" for d in report["noise_deltas_pt"])
        lines.append(
            f"\n{report['noise_of']} at 1e-6 input noise: acc delta {draws} pt "
            "(the floor under any runtime's delta)"
        )
    lines.append(f"\n{report['seconds']:.1f} s")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    """Run ``facekd eval``; prints a table (or one JSON object with ``--json``); returns 0.

    Raises FaceDataError / CheckpointError for bad input (the CLI maps them to exit code 2).
    """
    from faces.verification_sets import load_verification_set

    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if args.args is not None:
        try:
            extra = json.loads(args.args)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"--args is not valid JSON: {exc}") from exc
        if not isinstance(extra, dict):
            raise CheckpointError(f"--args must be a JSON object, got {args.args!r}")
    if args.n_pairs < 10:
        raise FaceDataError(f"--n-pairs must be at least 10 (10 folds), got {args.n_pairs}")
    for what, value in (("verification data", args.data), ("pairs file", args.pairs)):
        if value is not None and not Path(value).exists():  # fail before loading the model
            raise FaceDataError(f"{what} {value} does not exist")
    if args.noise_draws < 0:
        raise FaceDataError(f"--noise-draws must be 0 or more, got {args.noise_draws}")
    if args.reference is not None and not Path(args.reference).is_file():
        raise CheckpointError(f"reference model {args.reference} does not exist")
    model = load_embedder(args.model, arch=args.arch, args=extra, threads=args.threads)
    reference = (
        load_embedder(args.reference, threads=args.threads) if args.reference is not None else None
    )
    vset = load_verification_set(
        args.data, pairs_file=args.pairs, n_pairs=args.n_pairs, seed=args.seed
    )
    name = args.name or vset.name
    metrics, details = compare(
        model, reference, vset.images, vset.pairs, name, args.noise_draws, args.batch_size
    )
    report = {
        "model": str(args.model),
        "model_format": model.format,
        "model_detail": model.detail,
        "data": str(args.data),
        "set": name,
        "n_images": int(len(vset.images)),
        "n_pairs": int(len(vset.pairs)),
        "n_genuine": int(vset.pairs[:, 2].sum()),
        "metrics": metrics,
        **details,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if reference is not None:
        report["reference"] = {
            "model": str(args.reference),
            "model_format": reference.format,
            "model_detail": reference.detail,
        }
    if args.json:
        print(json.dumps(report))
    else:
        print(_format_table(report))
    return 0


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to the ``facekd`` parser's subparsers (func=run_eval)."""
    p = subparsers.add_parser(
        "eval",
        help="verification accuracy of a model (.pt, .ckpt, .onnx, .tflite) on a face set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="model artifact (.pt), checkpoint (.ckpt), .onnx or .tflite")
    p.add_argument(
        "--data",
        required=True,
        help="InsightFace .bin (lfw.bin, cfp_fp.bin, agedb_30.bin), LFW folder with --pairs, "
        "or an ImageFolder root/<person>/<image>",
    )
    p.add_argument("--pairs", metavar="PAIRS_TXT", help="LFW pairs.txt for a --data folder")
    p.add_argument(
        "--n-pairs",
        type=int,
        default=3000,
        metavar="N",
        help="pairs drawn from an ImageFolder (default 3000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of ImageFolder pairs (default 0)")
    p.add_argument("--name", help="set name in the metric keys (default: file stem / folder)")
    p.add_argument("--arch", metavar="NAME", help="architecture of a checkpoint (registry name)")
    p.add_argument("--args", metavar="JSON", help="its arguments, e.g. '{\"embedding_size\": 512}'")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    p.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime / TFLite threads (default: ONNX Runtime's choice / 1)",
    )
    p.add_argument(
        "--reference",
        metavar="MODEL2",
        help="a second model (artifact, .onnx, .tflite) on the same pairs: accuracy delta and "
        "embedding cosines (e.g. student.pt beside student_lce.tflite)",
    )
    p.add_argument(
        "--noise-draws",
        type=int,
        default=0,
        metavar="N",
        help="accuracy change of the reference (else the model) under 1e-6 relative input "
        "noise, N draws: the floor under any runtime's accuracy delta (default 0)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=run_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.evaluate_cmd MODEL --data DATA``: the command on its own."""
    parser = argparse.ArgumentParser(prog="facekd")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_eval(args)
    except (FaceDataError, CheckpointError) as exc:
        print(f"facekd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
