"""Side-by-side latency of an exported student: LCE kernels vs its float (and int8) twin.

Usage: python benchmarks/student_latency.py runs/<pipeline>/export [--runs 100] [--threads 1]

The same measurement as ``facekd bench`` (``export.bench_rows.bench``): each runtime in a
fresh process, LCE with indirect BGEMM (its float ops on XNNPACK, and on TFLite's builtin
kernels) and with its default x86 kernel, the float twin in
TFLite with and without XNNPACK, its int8 twin and ONNX Runtime. x86 has only LCE's generic
kernels: the figures are proxies; measure ARM boards with LCE's ``lce_benchmark_model``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from export.bench_rows import bench, format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--instances",
        type=int,
        default=5,
        help="fresh interpreters per TFLite runtime (x86 LCE latency is bimodal)",
    )
    parser.add_argument("--calibration", help="aligned faces for the int8 twin's calibration")
    args = parser.parse_args()
    result = bench(
        args.export_dir, args.threads, args.runs, args.warmup, args.instances, args.calibration
    )
    print(format_table(result))


if __name__ == "__main__":
    main()
