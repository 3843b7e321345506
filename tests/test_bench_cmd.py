"""``facekd bench --json`` on a tiny exported student: every runtime row, positive figures."""

from __future__ import annotations

import json

import pytest
import torch

from export.student_export import export_student
from faces.synthetic import write_synthetic_faces
from pipelines.cli import main
from students import create_student

pytestmark = pytest.mark.slow


def test_bench_json_on_an_export_folder(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    args = {"width": 32, "depths": [1, 1], "embedding_size": 8}
    student = create_student("birealface", **args).eval()
    twin = create_student("birealface", binary=False, **args).eval()
    twin.load_state_dict(student.state_dict())
    export = tmp_path / "export"
    export_student(student, twin, torch.randn(2, 3, 112, 112), export)
    faces = write_synthetic_faces(tmp_path / "faces", identities=4, images_per_identity=2)
    argv = ["bench", str(export), "--json", "--runs", "3", "--warmup", "1", "--instances", "1"]
    assert main([*argv, "--calibration", str(faces)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["key"]: r for r in result["rows"]}
    assert set(rows) == {
        "lce_indirect",
        "lce_default",
        "tflite_xnnpack",
        "tflite_no_xnnpack",
        "tflite_int8",
        "onnxruntime",
    }
    for r in rows.values():
        for key in ("latency_ms_p50", "latency_ms_p90", "fps", "size_bytes"):
            assert r[key] > 0, (r["key"], key)
        assert r["peak_rss_growth_bytes"] >= 0
    assert rows["lce_indirect"]["size_bytes"] < rows["tflite_xnnpack"]["size_bytes"]
    assert rows["tflite_int8"]["size_bytes"] < rows["tflite_xnnpack"]["size_bytes"]
    assert result["bench.speedup_vs_float"] > 0 and result["bench.int8_speedup_vs_float"] > 0
    assert result["notes"]["int8_calibration"]["images"] == 8
    assert (export / "student_int8.tflite").exists()


def test_bench_refuses_a_folder_without_models(tmp_path, capsys) -> None:
    assert main(["bench", str(tmp_path), "--json"]) == 2
    assert "not an export folder" in capsys.readouterr().err
