"""The rows of ``facekd bench MODEL``: latency, memory and size of an exported student on every
runtime.

MODEL is an export folder (``runs/<pipeline>/export``) or one ``.tflite`` file. Each runtime
runs in a fresh subprocess (``python -m export.bench_rows --worker ...``): warm-up, then
timed single-image inferences (median, p90, FPS) and the peak RSS growth of that process
(peak RSS at the end minus the RSS after importing the runtime, before loading the model).
x86 has only LCE's generic kernels: measure ARM boards with ``lce_benchmark_model``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MEMORY_NOTE = (
    "peak RSS growth of a fresh process per runtime: peak RSS (VmHWM) after the timed runs "
    "minus the RSS after importing the runtime, before the model was loaded"
)
CALIBRATION_FILE = "calibration_faces.npy"
"""uint8 (N, 112, 112, 3) training faces the export stage leaves for int8 calibration."""


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    kind: str  # worker kind
    path: Path


def _worker_measure(
    kind: str, path: str, threads: int, runs: int, warmup: int, instances: int
) -> dict[str, float]:
    """Runs in the fresh subprocess: import the runtime, note RSS, load, time, note peak."""
    from export import runtime

    if kind == "onnxruntime":
        import onnxruntime  # noqa: F401
    elif kind.startswith("litert"):
        import ai_edge_litert.interpreter  # noqa: F401
    else:
        import larq_compute_engine.tflite.python.interpreter  # noqa: F401
    base = runtime.rss_bytes()
    timing = {"threads": threads, "runs": runs, "warmup": warmup}
    if kind == "onnxruntime":
        result = runtime.onnxruntime_latency(path, **timing)
    else:
        data = Path(path).read_bytes()
        if kind.startswith("litert"):
            result = runtime.litert_latency(data, xnnpack=kind == "litert_xnnpack", **timing)
        elif kind == "lce_indirect":
            result = runtime.measure_latency(data, binary=True, instances=instances, **timing)
        elif kind == "lce_indirect_builtin":
            result = runtime.measure_latency(
                data, binary=True, xnnpack=False, instances=instances, **timing
            )
        elif kind == "lce_default":
            result = runtime.measure_latency(
                data, binary=True, indirect_bgemm=False, instances=instances, **timing
            )
        elif kind == "tflite_xnnpack":
            result = runtime.measure_latency(
                data, binary=False, xnnpack=True, instances=instances, **timing
            )
        else:
            raise ValueError(f"unknown runtime kind {kind!r}")
    result["peak_rss_growth_bytes"] = float(max(runtime.peak_rss_bytes() - base, 0))
    return result


def measure_in_subprocess(
    row: Row, threads: int, runs: int, warmup: int, instances: int
) -> dict[str, float]:
    """One runtime's figures, measured by a fresh Python process."""
    args = [row.kind, str(row.path), str(threads), str(runs), str(warmup), str(instances)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "export.bench_rows", "--worker", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{row.label}: benchmark process failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def load_calibration(
    export_dir: Path | None, folder: str | os.PathLike | None, limit: int = 100
) -> np.ndarray | None:
    """Normalised (N, 3, 112, 112) faces: ``--calibration DIR`` or the export stage's file."""
    from faces.transforms import IMAGE_SIZE, normalise

    if folder is not None:
        from PIL import Image

        paths = sorted(
            p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        if not paths:
            raise FileNotFoundError(f"--calibration {folder}: no .jpg/.png images")
        step = max(len(paths) // limit, 1)
        images = []
        for p in paths[::step][:limit]:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    im = im.resize((IMAGE_SIZE, IMAGE_SIZE))
                images.append(np.asarray(im))
        raw = np.stack(images)
    elif export_dir is not None and (export_dir / CALIBRATION_FILE).exists():
        raw = np.load(export_dir / CALIBRATION_FILE)[:limit]
    else:
        return None
    return normalise(raw.transpose(0, 3, 1, 2)).numpy()


def int8_model(export_dir: Path, calibration: np.ndarray) -> Path:
    """``student_int8.tflite``: the float twin quantized to int8 (written into the folder)."""
    from export.tflite import convert_int8, save_flatbuffer

    data = convert_int8(export_dir / "saved_model_float", calibration)
    return save_flatbuffer(data, export_dir / "student_int8.tflite")


def _lce_rows(prefix: str, path: Path) -> list[Row]:
    """An LCE flatbuffer's runtimes: indirect BGEMM with the float ops on XNNPACK (the figure
    of record), the same on TFLite's builtin float kernels, and LCE's default binary kernel."""
    return [
        Row("lce_indirect", f"{prefix}, indirect BGEMM, float ops XNNPACK", "lce_indirect", path),
        Row(
            "lce_indirect_builtin",
            f"{prefix}, indirect BGEMM, float ops builtin kernels",
            "lce_indirect_builtin",
            path,
        ),
        Row("lce_default", f"{prefix}, default kernel, float ops XNNPACK", "lce_default", path),
    ]


def _rows(model: Path, calibration_dir: str | None, int8: bool) -> tuple[list[Row], dict[str, Any]]:
    """The runtimes to measure for MODEL, and notes (int8 calibration source, skips)."""
    from export.tflite import op_histogram

    notes: dict[str, Any] = {}
    if model.is_file():
        if model.suffix != ".tflite":
            raise ValueError(f"{model}: expected an export folder or a .tflite file")
        if "LceBconv2d" in op_histogram(model.read_bytes()):
            return _lce_rows("LCE", model), notes
        return [
            Row("tflite_xnnpack", "TFLite, XNNPACK", "tflite_xnnpack", model),
            Row("tflite_no_xnnpack", "TFLite, no XNNPACK", "litert_no_xnnpack", model),
        ], notes
    d = model
    missing = [n for n in ("student_lce.tflite", "student_float.tflite") if not (d / n).exists()]
    if missing:
        raise FileNotFoundError(f"{d}: not an export folder (no {', '.join(missing)})")
    lce, flt = d / "student_lce.tflite", d / "student_float.tflite"
    rows = [
        *_lce_rows("LCE", lce),
        Row("tflite_xnnpack", "float twin, TFLite XNNPACK", "tflite_xnnpack", flt),
        Row(
            "tflite_no_xnnpack",
            "float twin, TFLite no XNNPACK (ai-edge-litert)",
            "litert_no_xnnpack",
            flt,
        ),
    ]
    if int8:
        calibration = load_calibration(d, calibration_dir)
        if calibration is None:
            notes["int8"] = (
                f"skipped: no {CALIBRATION_FILE} in {d} (exports before it existed); "
                "give --calibration DIR of aligned 112x112 faces"
            )
        elif not (d / "saved_model_float").exists():
            notes["int8"] = f"skipped: {d / 'saved_model_float'} is missing"
        else:
            notes["int8_calibration"] = {
                "images": len(calibration),
                "source": str(calibration_dir or d / CALIBRATION_FILE),
            }
            path = int8_model(d, calibration)
            rows.append(
                Row("tflite_int8", "float twin, int8 TFLite XNNPACK", "tflite_xnnpack", path)
            )
    if (d / "student_float.onnx").exists():
        rows.append(
            Row("onnxruntime", "float twin, ONNX Runtime", "onnxruntime", d / "student_float.onnx")
        )
    teacher = d.parent / "evaluate" / "teacher.onnx"
    if teacher.exists():
        rows.append(Row("teacher_onnxruntime", "teacher, ONNX Runtime", "onnxruntime", teacher))
    teacher_tflite = d / "teacher_float.tflite"
    if teacher_tflite.exists():
        label = "teacher, TFLite XNNPACK"
        rows.append(Row("teacher_tflite_xnnpack", label, "tflite_xnnpack", teacher_tflite))
    return rows, notes


FLOAT_ROWS = ("tflite_xnnpack", "tflite_no_xnnpack", "onnxruntime")


def bench(
    model: str | os.PathLike,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 10,
    instances: int = 3,
    calibration: str | None = None,
    int8: bool = True,
) -> dict[str, Any]:
    """Measure every runtime of MODEL (see module doc); figures as a JSON-ready dict."""
    rows, notes = _rows(Path(model), calibration, int8)
    results = []
    for row in rows:
        try:
            figures = measure_in_subprocess(row, threads, runs, warmup, instances)
        except RuntimeError as err:
            if row.key == "lce_indirect":
                raise
            # e.g. LCE's default x86 kernel refuses grouped binary convs (indirect BGEMM runs
            # them): report the runtime as not measured, with its own error line
            reasons = [ln for ln in str(err).splitlines() if "ERROR" in ln or "Error" in ln]
            notes[row.key] = "not measured: " + (reasons[0].strip() if reasons else str(err))
            continue
        results.append(
            {
                "key": row.key,
                "label": row.label,
                "file": str(row.path),
                "size_bytes": row.path.stat().st_size,
                **figures,
            }
        )
    by_key = {r["key"]: r["latency_ms_p50"] for r in results}
    summary: dict[str, float] = {}
    floats = [by_key[k] for k in FLOAT_ROWS if k in by_key]
    if "lce_indirect" in by_key and floats:
        summary["bench.speedup_vs_float"] = min(floats) / by_key["lce_indirect"]
    if "tflite_int8" in by_key:
        if floats:
            summary["bench.int8_speedup_vs_float"] = min(floats) / by_key["tflite_int8"]
        if "lce_indirect" in by_key:
            summary["bench.speedup_vs_int8"] = by_key["tflite_int8"] / by_key["lce_indirect"]
    return {
        "model": str(model),
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "instances": instances,
        "memory": MEMORY_NOTE,
        "rows": results,
        **summary,
        **({"notes": notes} if notes else {}),
    }


def format_table(result: dict[str, Any]) -> str:
    """The benchmark as a Markdown table, with the speedups below it."""
    lines = [
        f"{result['model']}: batch 1, {result['threads']} thread(s), {result['runs']} runs "
        f"after {result['warmup']} warm-up",
        "",
        "| runtime | p50 ms | p90 ms | FPS | peak RSS growth MB | size MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {r['latency_ms_p50']:.3f} | {r['latency_ms_p90']:.3f} "
            f"| {r['fps']:.1f} | {r['peak_rss_growth_bytes'] / 1e6:.1f} "
            f"| {r['size_bytes'] / 1e6:.3f} |"
        )
    lines.append("")
    for key in ("bench.speedup_vs_float", "bench.int8_speedup_vs_float", "bench.speedup_vs_int8"):
        if key in result:
            lines.append(f"{key}: {result[key]:.2f}x")
    for key, note in result.get("notes", {}).items():
        lines.append(f"{key}: {note}")
    lines.append(f"memory: {result['memory']}")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    kind, path, threads, runs, warmup, instances = sys.argv[2:8]
    out = _worker_measure(kind, path, int(threads), int(runs), int(warmup), int(instances))
    print(json.dumps(out))
