"""``facekd compare``: one row per pipeline run, the accuracy-vs-FPS Pareto front, pareto.png
(library: ``pipelines.tracking.compare``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.tracking.compare import (
    PRIVACY_COLUMNS,
    compare,
    format_table,
    lower_is_better,
    row_json,
    study_experiments,
)

PRIVACY_NOTE = (
    "privacy (- = no privacy stage): inv accept / inv SSIM = template inversion of the 1-bit "
    "student's embeddings: share of reconstructions the judge accepts as the person at FAR "
    "1e-3 / SSIM; twin / 1-bit grad PSNR = gradient inversion of one image (batch 1) "
    "through the float twin / the 1-bit student, dB; lower = less leakage"
)


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.study and not args.experiment:
        experiments = study_experiments(args.study)
    else:
        experiments = args.experiment or ["facekd"]
    rows, metric = compare(
        experiments, args.metric, Path(args.output), not args.no_log, args.privacy, args.study
    )
    if args.json:
        out: dict[str, object] = {
            "metric": metric,
            "rows": [row_json(r, args.privacy) for r in rows],
        }
        if args.privacy:
            out["privacy_columns"] = {name: key for name, key, _ in PRIVACY_COLUMNS}
        print(json.dumps(out, indent=2))
    else:
        print(format_table(rows, metric, args.privacy))
        order = " (lowest first: less leakage)" if lower_is_better(metric) else ""
        print(
            f"\nsorted by {metric}{order}; * = on its Pareto front with FPS; R = reference model "
            f"(the teacher as float / int8 TFLite); figure: {args.output}"
        )
        if args.privacy:
            print(PRIVACY_NOTE)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare pipeline runs: table, Pareto front, pareto.png")
    p.add_argument(
        "--experiment",
        action="append",
        metavar="NAME",
        help="MLflow experiment (repeatable; default: facekd)",
    )
    p.add_argument(
        "--metric",
        help="what to sort by and plot: verify.mean.acc (default), verify.<set>.acc or any "
        "verify.<set>.<metric> (auc, tar_far1e-3, acc_at_far); or a privacy stage metric: "
        "privacy.<teacher|twin|student>.<attack>.<psnr|ssim|accept> (leakage: lower is "
        "better, sorted lowest first, Pareto front on least leakage and FPS) or "
        "privacy.<model>.templates.<acc|sign_acc>",
    )
    p.add_argument(
        "--study",
        metavar="NAME",
        help="only the trials of this `facekd sweep` study (in the experiments that hold them)",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument(
        "--privacy",
        action="store_true",
        help="add privacy columns (student template inversion accept and SSIM, gradient "
        "inversion PSNR of float twin and 1-bit student; - for runs without a privacy stage; "
        "lower = less leakage) and, with --json, each row's privacy.* metrics",
    )
    p.add_argument("--output", default="pareto.png", help="where to write the figure")
    p.add_argument("--no-log", action="store_true", help="do not log the comparison to MLflow")
    p.set_defaults(func=_cmd_compare)
