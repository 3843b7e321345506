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
        "lce_indirect_builtin",
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


class _Grouped(torch.nn.Module):
    """A grouped binary conv (2 groups of 32): LCE's default x86 kernel refuses it."""

    def __init__(self, binary: bool = True) -> None:
        super().__init__()
        from students.layers import BinaryConv2d

        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 4, 4), torch.nn.BatchNorm2d(64), torch.nn.PReLU(64)
        )
        self.grouped = BinaryConv2d(64, 64, 3, groups=2, binary=binary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grouped(self.stem(x)).mean((2, 3))


def test_bench_notes_a_runtime_that_refuses_the_model(tmp_path) -> None:
    from export.bench_rows import bench

    torch.manual_seed(0)
    student, twin = _Grouped().eval(), _Grouped(binary=False).eval()
    twin.load_state_dict(student.state_dict())
    export_student(student, twin, torch.randn(2, 3, 112, 112), tmp_path)
    result = bench(tmp_path, runs=2, warmup=1, instances=1, int8=False)
    keys = {r["key"] for r in result["rows"]}
    assert "lce_indirect" in keys and "lce_default" not in keys
    assert "Grouped binary convolutions are not supported" in result["notes"]["lce_default"]
    assert result["bench.speedup_vs_float"] > 0
