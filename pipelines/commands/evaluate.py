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
import sys
import time
from pathlib import Path
from typing import Any


def run_eval(args: argparse.Namespace) -> int:
    """Run ``facekd eval``; prints a table (or one JSON object with ``--json``); returns 0.

    Raises FaceDataError / CheckpointError for bad input (the CLI maps them to exit code 2).
    """
    # the heavy stack is imported when the command runs, not when `facekd --help` builds it
    from export.embedders import load_embedder
    from faces.data import FaceDataError
    from faces.evaluate import FarThreshold
    from faces.verification_sets import load_verification_sets
    from pipelines.evaluation.models import FACEKD_ARTIFACTS, compare, eval_report, parse_data_args
    from pipelines.evaluation.report import format_table
    from teachers.checkpoint import CheckpointError

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
    model = load_embedder(
        args.model, arch=args.arch, args=extra, threads=args.threads, artifacts=FACEKD_ARTIFACTS
    )
    reference = (
        load_embedder(args.reference, threads=args.threads, artifacts=FACEKD_ARTIFACTS)
        if args.reference is not None
        else None
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
    report = eval_report(
        args.model, model, args.reference, reference, specs, sets, metrics, details, started=t0
    )
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
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
    """``python -m pipelines.commands.evaluate MODEL --data DATA``: the command on its own."""
    parser = argparse.ArgumentParser(prog="facekd")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    from faces.data import FaceDataError
    from teachers.checkpoint import CheckpointError

    try:
        return run_eval(args)
    except (FaceDataError, CheckpointError) as exc:
        print(f"facekd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
