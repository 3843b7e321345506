"""``facekd eval MODEL --data DATA [--data ...]``: verification accuracy of any model on any sets.

MODEL is one of

* a facekd model artifact (``teacher.pt`` / ``student.pt`` of a pipeline run);
* a checkpoint: a Lightning checkpoint of a training stage
  (``runs/<pipeline>/<stage>/checkpoints/last.ckpt``, weights under ``model.``; the architecture
  comes from the stage's model artifact beside it, or from ``--arch``/``--args``), or a plain
  PyTorch state dict with ``--arch`` (e.g. the pretrained MobileFaceNet ``.ckpt``);
* an ``.onnx`` file (ONNX Runtime; NCHW or NHWC input, batch 1 or dynamic);
* a ``.tflite`` flatbuffer (LCE interpreter: indirect BGEMM when it holds ``LceBconv2d`` ops,
  XNNPACK otherwise).

DATA is an InsightFace ``.bin``, an image folder with ``--pairs FILE`` (LFW ``pairs.txt``, or a
CSV/TSV of ``path_a, path_b, same[, fold]`` relative to the folder, for cross-age and
cross-pose protocols; with a ``fold`` column the file's folds are used), or an ImageFolder
(balanced pairs with a fixed seed, as the pipeline's evaluation makes them). Repeat ``--data``
for several sets (``--data DIR,pairs=FILE,name=NAME`` gives each its own pairs file and name):
one table with a row per set and the mean accuracy, every image that the sets share decoded and
embedded once. Images are normalised as ``(x - 127.5) / 128`` and embedded with their
horizontal flip, like everywhere in facekd. ``--threshold-from SET`` adds the accuracy of every
set at one threshold chosen on SET for ``--threshold-far`` (as a deployment fixes it).

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from faces.data import FaceDataError
from faces.evaluate import EmbedFn, FarThreshold
from faces.verification_sets import SetSpec, VerificationSet
from pipelines.eval_report import format_table
from teachers.checkpoint import CheckpointError

__all__ = [
    "LoadedModel",
    "add_eval_parser",
    "compare",
    "load_embedder",
    "parse_data_args",
    "run_eval",
]

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
NOISE_RELATIVE = 1e-6
"""Relative input perturbation of ``--noise-draws``: float32 rounding's order of magnitude."""


def _split(values: np.ndarray, sets: list[VerificationSet]) -> dict[str, np.ndarray]:
    """Per-set slices of values computed over all sets' pairs concatenated."""
    out, start = {}, 0
    for s in sets:
        out[s.name] = values[start : start + len(s.pairs)]
        start += len(s.pairs)
    return out


def _set_metrics(
    scores: dict[str, np.ndarray], sets: list[VerificationSet], threshold: FarThreshold | None
) -> dict[str, float]:
    from faces.evaluate import sets_metrics

    try:
        return sets_metrics(scores, sets, threshold)
    except ValueError as exc:
        raise FaceDataError(f"cannot run the verification protocol: {exc}") from exc


def compare(
    model: LoadedModel,
    reference: LoadedModel | None,
    sets: list[VerificationSet],
    noise_draws: int = 0,
    batch_size: int = 64,
    threshold: FarThreshold | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of ``model`` on every set (``verify.<set>.*``, ``verify.mean.acc``); each image
    the sets use is embedded once per model. With a ``reference``, its accuracy and the delta
    (pt) per set and the per-image embedding cosines between the two; with ``noise_draws``,
    the accuracy deltas (pt) of the reference (else of ``model``) on inputs perturbed by 1e-6
    relative noise.

    Returns (metrics, details): metrics are floats for tracking; details hold the lists (noise
    deltas per draw, of the mean accuracy) and what was compared.
    """
    from faces.evaluate import pair_embeddings, perturbed_embed_fn, scores_of

    images = sets[0].images
    if any(s.images is not images for s in sets):
        raise ValueError("compare needs sets loaded together (one shared images tensor)")
    every = np.concatenate([s.pairs for s in sets])
    emb, where = pair_embeddings(model.embed, images, every, batch_size)
    metrics = _set_metrics(_split(scores_of(emb, where), sets), sets, threshold)
    details: dict[str, Any] = {}
    names = [s.name for s in sets] + (["mean"] if len(sets) > 1 else [])
    base, base_metrics = model, metrics
    if reference is not None:
        ref_emb, _ = pair_embeddings(reference.embed, images, every, batch_size)
        if ref_emb.shape != emb.shape:
            raise CheckpointError(
                f"the reference's embeddings are {ref_emb.shape[1] // 2}-d, the model's "
                f"{emb.shape[1] // 2}-d: they cannot be compared"
            )
        ref_metrics = _set_metrics(_split(scores_of(ref_emb, where), sets), sets, None)
        for name in names:
            key = f"verify.{name}"
            metrics[f"{key}.acc_reference"] = ref_metrics[f"{key}.acc"]
            metrics[f"{key}.acc_delta_pt"] = 100 * (
                metrics[f"{key}.acc"] - ref_metrics[f"{key}.acc"]
            )
        cosines = (emb.astype(np.float64) * ref_emb).sum(1)  # rows are L2-normalised
        metrics["parity.cosine_min"] = float(cosines.min())
        metrics["parity.cosine_median"] = float(np.median(cosines))
        metrics["parity.share_cosine_099"] = float((cosines >= 0.99).mean())
        base, base_metrics = reference, ref_metrics
    if noise_draws:
        deltas: dict[str, list[float]] = {name: [] for name in names}
        for k in range(noise_draws):
            noisy = perturbed_embed_fn(base.embed, NOISE_RELATIVE, seed=k)
            noisy_emb = pair_embeddings(noisy, images, every, batch_size)[0]
            noisy_metrics = _set_metrics(_split(scores_of(noisy_emb, where), sets), sets, None)
            for name in names:
                key = f"verify.{name}.acc"
                deltas[name].append(100 * (noisy_metrics[key] - base_metrics[key]))
        for name in names:
            metrics[f"verify.{name}.noise_delta_pt_max"] = float(np.max(np.abs(deltas[name])))
        details["noise_of"] = "reference" if reference is not None else "model"
        details["noise_deltas_pt"] = deltas[names[-1]]
    return metrics, details


def parse_data_args(
    data: list[str], pairs: list[str] | None, names: list[str] | None
) -> list[SetSpec]:
    """``--data PATH[,pairs=FILE][,name=NAME]`` (repeatable) into set specs; ``--pairs`` and
    ``--name`` go with a single ``--data``."""
    specs = []
    for value in data:
        path, options = value, {}
        if not Path(value).exists() and "," in value:
            path, *parts = value.split(",")
            for part in parts:
                key, eq, val = part.partition("=")
                if not eq or key not in ("pairs", "name") or not val:
                    raise FaceDataError(
                        f"--data {value}: expected PATH[,pairs=FILE][,name=NAME], got {part!r}"
                    )
                options[key] = val
        specs.append(SetSpec(path, options.get("name"), options.get("pairs")))
    for flag, given, field in (("--pairs", pairs, "pairs_file"), ("--name", names, "name")):
        if not given:
            continue
        if len(given) > 1 or len(specs) > 1:
            raise FaceDataError(
                f"{flag} goes with a single --data; with several, write "
                f"--data PATH,{'pairs' if field == 'pairs_file' else 'name'}=VALUE"
            )
        specs[0] = replace(specs[0], **{field: given[0]})
    return specs


def _set_report(spec: SetSpec, vset: VerificationSet) -> dict[str, Any]:
    used = np.unique(vset.pairs[:, :2])
    return {
        "set": vset.name,
        "data": spec.path,
        "pairs_file": spec.pairs_file,
        "n_images": int(len(used)),
        "n_pairs": int(len(vset.pairs)),
        "n_genuine": int(vset.pairs[:, 2].sum()),
        "own_folds": vset.folds is not None,
    }


def run_eval(args: argparse.Namespace) -> int:
    """Run ``facekd eval``; prints a table (or one JSON object with ``--json``); returns 0.

    Raises FaceDataError / CheckpointError for bad input (the CLI maps them to exit code 2).
    """
    from faces.verification_sets import load_verification_sets

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
    specs = parse_data_args(args.data, args.pairs, args.name)
    for spec in specs:  # fail before loading the model
        for what, value in (("verification data", spec.path), ("pairs file", spec.pairs_file)):
            if value is not None and not Path(value).exists():
                raise FaceDataError(f"{what} {value} does not exist")
    if args.noise_draws < 0:
        raise FaceDataError(f"--noise-draws must be 0 or more, got {args.noise_draws}")
    if args.reference is not None and not Path(args.reference).is_file():
        raise CheckpointError(f"reference model {args.reference} does not exist")
    model = load_embedder(args.model, arch=args.arch, args=extra, threads=args.threads)
    reference = (
        load_embedder(args.reference, threads=args.threads) if args.reference is not None else None
    )
    sets = load_verification_sets(specs, n_pairs=args.n_pairs, seed=args.seed)
    threshold = None
    if args.threshold_from is not None:
        threshold = FarThreshold(args.threshold_from, args.threshold_far)
        if args.threshold_from not in [s.name for s in sets]:
            raise FaceDataError(
                f"--threshold-from {args.threshold_from}: not one of the sets "
                f"({', '.join(s.name for s in sets)})"
            )
    metrics, details = compare(model, reference, sets, args.noise_draws, args.batch_size, threshold)
    set_reports = [_set_report(spec, s) for spec, s in zip(specs, sets, strict=True)]
    one = len(sets) == 1
    report = {
        "model": str(args.model),
        "model_format": model.format,
        "model_detail": model.detail,
        "data": specs[0].path if one else [spec.path for spec in specs],
        "set": sets[0].name if one else ",".join(s.name for s in sets),
        "n_images": int(len(np.unique(np.concatenate([s.pairs[:, :2] for s in sets])))),
        "n_pairs": sum(r["n_pairs"] for r in set_reports),
        "n_genuine": sum(r["n_genuine"] for r in set_reports),
        "sets": set_reports,
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
        print(format_table(report))
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
        action="append",
        metavar="PATH[,pairs=FILE][,name=NAME]",
        help="InsightFace .bin (lfw.bin, cfp_fp.bin, agedb_30.bin), an image folder with a pairs "
        "file (LFW pairs.txt or CSV/TSV path_a,path_b,same[,fold]), or an ImageFolder "
        "root/<person>/<image>; repeat for several sets (one table, images embedded once)",
    )
    p.add_argument(
        "--pairs",
        action="append",
        metavar="FILE",
        help="pairs file for a single --data folder: LFW pairs.txt or CSV/TSV",
    )
    p.add_argument(
        "--n-pairs",
        type=int,
        default=3000,
        metavar="N",
        help="pairs drawn from an ImageFolder (default 3000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of ImageFolder pairs (default 0)")
    p.add_argument(
        "--name",
        action="append",
        help="set name in the metric keys for a single --data (default: file stem / folder)",
    )
    p.add_argument(
        "--threshold-from",
        metavar="SET",
        help="also report accuracy at one fixed threshold chosen on this set for --threshold-far "
        "(verify.<set>.acc_at_far on every set)",
    )
    p.add_argument(
        "--threshold-far",
        type=float,
        default=1e-3,
        metavar="FAR",
        help="false accept rate of --threshold-from (default 1e-3)",
    )
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
