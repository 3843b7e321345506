"""``facekd ablate``: one pipeline file, several variants, sibling MLflow runs to compare.

The ablation file and how its variants run: ``pipelines.orchestration.ablation``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.orchestration import ablation


def _cmd_ablate(args: argparse.Namespace) -> int:
    only = [v for s in args.variants or [] for v in s.split(",") if v]
    ablation.run_ablation(args.pipeline, args.set, only or None, args.force)
    print("\nCompare them: facekd compare --experiment <the file's pipeline.experiment>")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ablate",
        help="run every variant of an ablation file as sibling pipelines (shared teacher)",
        description=ablation.__doc__.split("\n\n")[0],
    )
    p.add_argument("pipeline", help="ablation YAML (a pipeline with variants:)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a value in every variant (repeatable), e.g. distill.train.max_minutes=5",
    )
    p.add_argument(
        "--variants",
        action="append",
        metavar="A,B",
        help="run only these variants (comma-separated, repeatable)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="re-run the variants' distill, export and evaluate stages (the teacher is kept)",
    )
    p.set_defaults(func=_cmd_ablate)
