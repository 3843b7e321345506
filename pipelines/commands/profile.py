"""``facekd profile NAME``: size and cost of any registered teacher or student at 112x112
(library: ``pipelines.evaluation.profiling``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pipelines.core.config import apply_override


def _cmd_profile(args: argparse.Namespace) -> int:
    from pipelines.evaluation.profiling import profile_model

    model_args: dict[str, Any] = {}
    for assignment in args.arg:
        apply_override(model_args, assignment)
    result = profile_model(args.name, model_args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            shown = f"{value:,}" if isinstance(value, int) else value
            print(f"{key:14s} {shown}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="params, FLOPs, 1-bit/32-bit MACs and size of a model")
    p.add_argument("name", help="registered teacher or student, e.g. edgeface_xs_gamma_06")
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model argument (repeatable), e.g. --arg width=32",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_profile)
