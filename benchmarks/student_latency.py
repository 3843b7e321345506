"""Side-by-side latency of an exported student: LCE kernels vs its float twin, one run.

Usage: python benchmarks/student_latency.py runs/<pipeline>/export [--runs 100] [--threads 1]

Prints median/p90 latency (batch 1, pooled over several fresh interpreters) for the LCE
flatbuffer with indirect BGEMM and with LCE's default x86 kernel, the float twin in TFLite
(XNNPACK) and in ONNX Runtime, and the ratios, all measured in the same process one after
another. x86 has only LCE's generic kernels: the figures are proxies; measure ARM boards with
LCE's ``lce_benchmark_model``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from export.runtime import measure_latency, onnxruntime_latency

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--instances",
        type=int,
        default=5,
        help="fresh interpreters per runtime (x86 LCE latency is bimodal)",
    )
    args = parser.parse_args()
    d = args.export_dir
    lce = (d / "student_lce.tflite").read_bytes()
    flt = (d / "student_float.tflite").read_bytes()
    timing = {
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "instances": args.instances,
    }
    rows = {
        "LCE, indirect BGEMM": measure_latency(lce, binary=True, **timing),
        "LCE, default kernel": measure_latency(lce, binary=True, indirect_bgemm=False, **timing),
        "float twin, TFLite XNNPACK": measure_latency(flt, binary=False, **timing),
        "float twin, ONNX Runtime": onnxruntime_latency(
            d / "student_float.onnx", threads=args.threads, runs=args.runs, warmup=args.warmup
        ),
    }
    base = rows["LCE, indirect BGEMM"]["latency_ms_p50"]
    print(f"{d}: batch 1, {args.threads} thread(s), {args.runs} runs after {args.warmup} warm-up")
    print(f"{'runtime':30s} {'p50 ms':>8s} {'p90 ms':>8s} {'vs LCE':>8s}  per-instance p50")
    for name, r in rows.items():
        spread = ""
        if "latency_ms_p50_min_instance" in r:
            spread = (
                f"{r['latency_ms_p50_min_instance']:.2f}-{r['latency_ms_p50_max_instance']:.2f}"
            )
        print(
            f"{name:30s} {r['latency_ms_p50']:8.3f} {r['latency_ms_p90']:8.3f} "
            f"{r['latency_ms_p50'] / base:7.2f}x  {spread}"
        )
    print(f"sizes: LCE {len(lce) / 1e6:.3f} MB, float twin {len(flt) / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
