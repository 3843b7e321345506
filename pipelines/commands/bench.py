"""``facekd bench MODEL``: latency, memory and size of an exported student on every runtime
(library: ``export.bench_rows``)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_bench(args: argparse.Namespace) -> int:
    from export.bench_rows import bench, format_table
    from pipelines.core.config import ConfigError

    try:
        result = bench(
            args.model,
            args.threads,
            args.runs,
            args.warmup,
            args.instances,
            args.calibration,
            not args.no_int8,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="latency, FPS, memory and size of an exported student on each runtime"
    )
    p.add_argument("model", help="export folder (runs/<pipeline>/export) or a .tflite file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50, help="timed inferences per runtime")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--instances",
        type=int,
        default=3,
        help="fresh TFLite interpreters pooled per runtime (x86 LCE latency is bimodal)",
    )
    p.add_argument(
        "--calibration",
        metavar="DIR",
        help="aligned 112x112 faces for int8 calibration (default: the export's saved faces)",
    )
    p.add_argument("--no-int8", action="store_true", help="skip the int8 twin")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_bench)
