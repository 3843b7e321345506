"""facekd's QuickNet-small beside Larq's own, LCE latency measured side by side in one run.

    make larq-zoo                                  # once: larq + larq-zoo into .larq-zoo/
    python benchmarks/larq_native.py [--runs 100] [--rounds 3] [--student quicknet_small]

The native model is larq-zoo's ``QuickNetSmall(include_top=False)`` at 112x112 with the same
face head as facekd's students (ReLU, 3x3 global depthwise conv, BN, 512-d dense, BN), built
and converted by LCE's own Keras converter in a subprocess (Larq needs Keras 2:
``TF_USE_LEGACY_KERAS=1``; its packages live in ``.larq-zoo/``, outside facekd's environment,
because larq-zoo's dependencies would downgrade protobuf). facekd's student goes through the
PyTorch route (Brevitas -> QONNX -> lowering -> onnx2tf -> LCE). Both flatbuffers are then
timed alternately in this process (``--rounds`` rounds of fresh interpreters, indirect BGEMM,
1 thread, batch 1); the ops of both are listed. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LARQ_LIB = ROOT / ".larq-zoo"
sys.path.insert(0, str(ROOT))


def build_native(out: Path, embedding: int) -> None:
    """(runs in the subprocess) larq-zoo QuickNetSmall + face head -> LCE flatbuffer."""
    import larq_compute_engine as lce
    import larq_zoo as lqz
    import tensorflow as tf

    backbone = lqz.sota.QuickNetSmall(input_shape=(112, 112, 3), weights=None, include_top=False)
    x = tf.keras.layers.Activation("relu")(backbone.output)
    size = int(x.shape[1])
    x = tf.keras.layers.DepthwiseConv2D(size, use_bias=False)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(embedding, use_bias=False)(x)
    x = tf.keras.layers.BatchNormalization()(x)
    model = tf.keras.Model(backbone.input, x)
    out.write_bytes(lce.convert_keras_model(model))
    print(json.dumps({"params": int(model.count_params())}))


def native_flatbuffer(tmp: Path, embedding: int) -> tuple[bytes, int]:
    """Build the native model in a subprocess with Larq's environment."""
    if not (LARQ_LIB / "larq_zoo").is_dir():
        raise SystemExit(f"larq-zoo is not installed in {LARQ_LIB}: run `make larq-zoo` first")
    out = tmp / "native_lce.tflite"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(LARQ_LIB), str(ROOT)])
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from benchmarks.larq_native import build_native; "
        "build_native(__import__('pathlib').Path(sys.argv[2]), int(sys.argv[3]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(LARQ_LIB), str(out), str(embedding)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"building the larq-zoo model failed:\n{done.stderr[-3000:]}")
    params = json.loads(done.stdout.strip().splitlines()[-1])["params"]
    return out.read_bytes(), params


def facekd_flatbuffer(tmp: Path, name: str, embedding: int) -> tuple[bytes, int]:
    """facekd's student through the PyTorch export chain."""
    import torch

    from export.student_export import export_student
    from students import create_student

    torch.manual_seed(0)
    student = create_student(name, embedding_size=embedding).eval()
    twin = create_student(name, embedding_size=embedding, binary=False).eval()
    twin.load_state_dict(student.state_dict())
    result = export_student(student, twin, torch.randn(4, 3, 112, 112), tmp / "facekd")
    params = sum(p.numel() for p in student.parameters())
    return Path(result.lce_tflite).read_bytes(), params


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="quicknet_small")
    ap.add_argument("--embedding", type=int, default=512)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the result to this JSON file")
    args = ap.parse_args(argv)

    from export.runtime import measure_latency
    from export.tflite import flatbuffer_macs, op_histogram
    from pipelines.orchestration.summary import machine_description

    with tempfile.TemporaryDirectory() as tmp:
        native, native_params = native_flatbuffer(Path(tmp), args.embedding)
        ours, our_params = facekd_flatbuffer(Path(tmp), args.student, args.embedding)
    models = {"larq-zoo (Keras -> LCE)": native, f"facekd {args.student}": ours}
    times: dict[str, list[float]] = {k: [] for k in models}
    timing = {"threads": 1, "runs": args.runs, "warmup": 20, "instances": 1}
    for _ in range(args.rounds):  # alternate, so both see the same machine state
        for label, fb in models.items():
            times[label].append(measure_latency(fb, binary=True, **timing)["latency_ms_p50"])
    result = {"machine": machine_description(), "rounds": args.rounds, "runs": args.runs}
    print(f"{machine_description()}; batch 1, 1 thread, LCE indirect BGEMM")
    for (label, fb), params in zip(models.items(), (native_params, our_params), strict=True):
        ms = sorted(times[label])[len(times[label]) // 2]
        ops = op_histogram(fb)
        macs = flatbuffer_macs(fb)
        result[label] = {"ms": ms, "rounds_ms": times[label], "ops": ops, "params": params, **macs}
        print(
            f"{label:32s} {ms:7.3f} ms (rounds {', '.join(f'{t:.3f}' for t in times[label])}) "
            f"params {params / 1e6:.2f} M, 1-bit MACs {macs['binary_macs'] / 1e6:.1f} M, "
            f"32-bit MACs {macs['float_macs'] / 1e6:.2f} M, {len(fb) / 1e6:.2f} MB"
        )
        print(f"{'':32s} ops: {json.dumps(ops, sort_keys=True)}")
    labels = list(models)
    ratio = result[labels[1]]["ms"] / result[labels[0]]["ms"]
    result["facekd_vs_native"] = ratio
    print(f"facekd / larq-zoo latency: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
