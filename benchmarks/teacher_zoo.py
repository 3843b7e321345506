"""Every registered teacher: params, FLOPs at 112x112, float TFLite and ONNX Runtime latency.

    python benchmarks/teacher_zoo.py [--runs 50] [--only edgeface_xxs ...] [--markdown]

Each teacher (random weights: speed does not depend on them) is exported to ONNX and through
onnx2tf to a float TFLite flatbuffer; the parity of both with PyTorch is checked (cosine).
Latency: batch 1, 1 thread, median over ``--runs`` after warm-up, pooled over 2 interpreter
instances; TFLite with XNNPACK and, to check that XNNPACK really took the graph, without it
(reference kernels). ``--markdown`` prints the table of docs/zoo.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--only", nargs="*", help="teacher names (default: all registered)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from export.runtime import measure_latency, onnxruntime_latency
    from export.teacher_export import export_teacher
    from pipelines.evaluation.profiling import profile_model
    from pipelines.orchestration.summary import machine_description
    from teachers import create_teacher, list_teachers

    torch.manual_seed(0)
    names = args.only or list_teachers()
    rows = []
    for name in names:
        profile = profile_model(name)
        with tempfile.TemporaryDirectory() as tmp:
            exported = export_teacher(create_teacher(name), tmp)
            fb = exported.tflite.read_bytes()
            timing = {"threads": 1, "runs": args.runs, "warmup": 10, "instances": 2}
            xnn = measure_latency(fb, binary=False, **timing)
            ref = measure_latency(fb, binary=False, xnnpack=False, **timing)
            ort = onnxruntime_latency(exported.onnx, threads=1, runs=args.runs, warmup=10)
        row = {
            "teacher": name,
            "params": profile["params"],
            "mflops": profile["flops"] / 1e6,
            "tflite_ms": xnn["latency_ms_p50"],
            "tflite_no_xnnpack_ms": ref["latency_ms_p50"],
            "onnxruntime_ms": ort["latency_ms_p50"],
            "tflite_bytes": len(fb),
            "tflite_cosine_min": exported.tflite_cosine_min,
            "onnx_cosine_min": exported.onnx_cosine_min,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmachine: {machine_description()}")
    if args.markdown:
        print(
            "\n| teacher | params | MFLOPs (112x112) | float TFLite ms (XNNPACK) "
            "| without XNNPACK ms | ONNX Runtime ms | TFLite vs PyTorch cosine |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| `{r['teacher']}` | {r['params'] / 1e6:.2f} M | {r['mflops']:.1f} "
                f"| {r['tflite_ms']:.2f} | {r['tflite_no_xnnpack_ms']:.2f} "
                f"| {r['onnxruntime_ms']:.2f} | {r['tflite_cosine_min']:.5f} |"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
