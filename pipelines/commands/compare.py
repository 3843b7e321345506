"""``facekd compare``: one row per pipeline run, the accuracy-vs-FPS Pareto front, pareto.png
(library: ``pipelines.compare_rows``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.compare_rows import compare, format_table, row_json


def _cmd_compare(args: argparse.Namespace) -> int:
    experiments = args.experiment or ["facekd"]
    rows, metric = compare(experiments, args.metric, Path(args.output), not args.no_log)
    if args.json:
        print(json.dumps({"metric": metric, "rows": [row_json(r) for r in rows]}, indent=2))
    else:
        print(format_table(rows, metric))
        print(
            f"\nsorted by {metric}; * = on its Pareto front with FPS; R = reference model (the "
            f"teacher as float / int8 TFLite); figure: {args.output}"
        )
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
        "verify.<set>.<metric> (auc, tar_far1e-3, acc_at_far)",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--output", default="pareto.png", help="where to write the figure")
    p.add_argument("--no-log", action="store_true", help="do not log the comparison to MLflow")
    p.set_defaults(func=_cmd_compare)
