"""``facekd sweep``: search pipeline keys with Optuna for the accuracy-latency front.

The sweep file and how trials run, prune and resume: ``pipelines.orchestration.sweep``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.core.sweep_config import load_sweep
from pipelines.orchestration import sweep as sweeps


def _cmd_sweep(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, args.set)
    result = sweeps.report_sweep(sweep, sweeps.run_sweep(sweep, args.storage, trials=args.trials))
    text = Path(result.files["table"]).read_text()
    print(f"\n{text}")
    for name, path in result.files.items():
        print(f"{name}: {path}")
    print(f"\nCompare them: facekd compare --study {result.study}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="search students and recipes (Optuna) for the accuracy-latency Pareto front",
        description=(sweeps.__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("sweep", help="sweep YAML (a pipeline with a sweep: section)")
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage: a database URL that workers on several machines share "
        "(default: sqlite:///<output_dir>/optuna.db)",
    )
    p.add_argument("--trials", type=int, default=None, help="finished trials to reach")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a value of the base pipeline (repeatable)",
    )
    p.set_defaults(func=_cmd_sweep)
