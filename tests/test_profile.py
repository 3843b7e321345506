"""``facekd profile`` for teachers and students; teacher export to ONNX and float TFLite."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.cli import main
from pipelines.evaluation.profiling import count_flops, profile_model


def test_flops_of_a_known_layer() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv) == 2 * 112 * 112 * 8 * 3 * 9


def test_teacher_profile_json(capsys) -> None:
    assert main(["profile", "edgeface_xxs", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["kind"] == "teacher" and result["binary_macs"] == 0
    assert result["params"] == 1_245_000 or abs(result["params"] / 1.24e6 - 1) < 0.03
    assert result["float_macs"] * 2 == result["flops"]
    assert result["size_bytes"] >= 4 * result["params"]


@pytest.mark.slow
def test_student_profile_counts_the_lce_flatbuffer(capsys) -> None:
    args = ["profile", "birealface", "--arg", "width=32", "--arg", "depths=[1]", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["kind"] == "student" and result["bconv_coverage"] == 1.0
    # counted by hand: width-32 BiRealFace with one binary block at 28x28
    stem = 56 * 56 * 32 * (3 * 3 * 3)  # 3x3 stride-2 conv, 3 -> 32
    stem += 28 * 28 * 32 * (3 * 3)  # 3x3 stride-2 depthwise
    stem += 28 * 28 * 32 * 32  # 1x1 conv 32 -> 32
    head = 32 * 28 * 28 + 128 * 32  # global depthwise 28x28, linear 32 -> 128
    assert result["binary_macs"] == 28 * 28 * 32 * (3 * 3 * 32)
    assert result["float_macs"] == stem + head
    # the float twin's FLOPs hold every MAC of the LCE model twice (multiply + add)
    assert result["flops"] == pytest.approx(
        2 * (result["binary_macs"] + result["float_macs"]), rel=0.05
    )
    assert 0 < result["size_bytes"] < result["params"] * 4


def test_unknown_model_exits_2(capsys) -> None:
    assert main(["profile", "resnet9000"]) == 2
    assert "registered:" in capsys.readouterr().err


@pytest.mark.slow
def test_teacher_exports_to_onnx_and_float_tflite(tmp_path) -> None:
    from export.teacher_export import export_teacher
    from teachers import create_teacher

    torch.manual_seed(0)
    result = export_teacher(create_teacher("edgeface_xxs"), tmp_path)
    assert result.onnx.is_file() and result.tflite.is_file()
    assert result.onnx_cosine_min > 0.9999 and result.tflite_cosine_min > 0.999
    assert profile_model("edgeface_xxs")["params"] > 1e6
