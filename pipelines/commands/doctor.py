"""``facekd doctor``: the versions of facekd's stack, CUDA / DALI, the tracking URI, the cache."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from pipelines.orchestration.environment import Check, report


def format_report(checks: list[Check]) -> str:
    """Two columns, a ``!`` before each problem."""
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{' ' if c.ok else '!'} {c.name:<{width}}  {c.value}" for c in checks)


def _cmd_doctor(args: argparse.Namespace) -> int:
    checks = report()
    problems = [c for c in checks if not c.ok]
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(format_report(checks))
        if problems:
            print(f"\n{len(problems)} problem(s): " + "; ".join(c.name for c in problems))
    return 1 if problems else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="show the versions of the stack, CUDA / DALI, the tracking URI and the cache folder",
        description=__doc__,
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=_cmd_doctor)
