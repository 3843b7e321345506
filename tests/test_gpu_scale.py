"""benchmarks/gpu_scale.py, the benchmark prepared for a lent GPU, runs on the CPU (--quick)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from faces.dali_loader import dali_available

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("gpu_scale", ROOT / "benchmarks/gpu_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_cpu_run_reports_every_student_and_precision(tmp_path: Path) -> None:
    out = tmp_path / "gpu_scale.json"
    args = ["--quick", "--device", "cpu", "--work", str(tmp_path / "work"), "--json", str(out)]
    assert _benchmark().main(args) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu"
    assert report["settings"]["precisions"] == ["bf16", "fp32"]  # fp16 needs a GPU
    assert any("fp16" in line for line in report["skipped"])
    rows = report["rows"]

    def row(student: str, precision: str, feed: str) -> dict:
        (found,) = [
            r
            for r in rows
            if (r.get("student"), r.get("precision"), r["feed"], r["targets"])
            == (student, precision, feed, "cached")
        ]
        return found

    for student in ("birealface", "quicknet_small"):
        for precision in ("bf16", "fp32"):
            streamed, on_device = (
                row(student, precision, "workers"),
                row(student, precision, "device"),
            )
            for r in (streamed, on_device):
                assert r["images_per_s"] > 0 and r["step_ms"] > 0
            assert 0 <= streamed["loader_share"] < 1
    (alone,) = [r for r in rows if r["config"].startswith("loader alone, workers")]
    assert alone["images_per_s"] > 0
    dali = [r for r in rows if r["feed"] == "dali"]
    if dali_available():  # the DALI loader alone, and a student trained from it
        assert len(dali) == 2 and all(r["images_per_s"] > 0 for r in dali)
    else:
        assert not dali and "skipped: NVIDIA DALI not installed" in report["skipped"]
