"""The float twin as a control (``distill.control: twin``), two-step training from it
(``distill.init: twin``), the binarization cost and the learning curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_pipeline import tiny_pipeline, write_pipeline

from pipelines.core.config import ConfigError, load_config


def test_control_twin_adds_the_twin_stage_before_distill(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, tiny_pipeline(**{"distill.control": "twin"}))
    assert load_config(path).stages == ["teacher", "twin", "distill", "export", "evaluate"]
    path = write_pipeline(tmp_path, tiny_pipeline(**{"distill.init": "twin", "stages": None}))
    assert load_config(path).stages[:3] == ["teacher", "twin", "distill"]
    plain = load_config(write_pipeline(tmp_path, tiny_pipeline()))
    assert "twin" not in plain.stages


def test_a_twin_of_a_float_student_is_refused(tmp_path: Path) -> None:
    raw = tiny_pipeline(**{"distill.control": "twin", "distill.args.binary": False})
    with pytest.raises(ConfigError, match=r"distill.control: twin needs a 1-bit student"):
        load_config(write_pipeline(tmp_path, raw))
    raw = tiny_pipeline(**{"distill.init": "twin", "distill.args.binary": False})
    with pytest.raises(ConfigError, match=r"distill.init: twin needs a 1-bit student"):
        load_config(write_pipeline(tmp_path, raw))
    with pytest.raises(ConfigError, match="distill.control"):
        load_config(write_pipeline(tmp_path, tiny_pipeline(**{"distill.control": "float"})))


def test_init_from_twin_copies_every_tensor_and_names_a_mismatch() -> None:
    from pipelines.orchestration.stages import _init_from_twin
    from students.registry import create_student

    twin = create_student("birealface", width=16, depths=[1], embedding_size=16, binary=False)
    student = create_student("birealface", width=16, depths=[1], embedding_size=16)
    _init_from_twin(student, twin.state_dict())
    for key, value in student.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key
    wider = create_student("birealface", width=32, depths=[1], embedding_size=16, binary=False)
    with pytest.raises(ConfigError, match=r"distill.init: twin: 'stem.*' is \(32"):
        _init_from_twin(student, wider.state_dict())


def test_init_teacher_on_a_student_without_its_topology_is_refused() -> None:
    from pipelines.orchestration.stages import _init_from_teacher
    from students.registry import create_student
    from teachers.registry import create_teacher

    student = create_student("birealface", width=16, depths=[1], embedding_size=32)
    teacher = create_teacher("vit_face_micro", embedding_size=32)
    with pytest.raises(ConfigError, match="distill.init: teacher"):
        _init_from_teacher(student, teacher, "birealface")


def test_binarization_cost_on_every_set() -> None:
    from pipelines.orchestration.stages import binarization_cost

    student = {"verify.a.acc": 0.70, "verify.b.acc": 0.80, "verify.mean.acc": 0.75}
    twin = {"verify.a.acc": 0.75, "verify.a.acc_std": 0.01, "verify.b.acc": 0.90}
    twin["verify.mean.acc"] = 0.825
    out = binarization_cost(student, twin, ["a", "b"])
    assert out["distill.binarization_cost.a"] == pytest.approx(0.05)
    assert out["distill.binarization_cost.b"] == pytest.approx(0.10)
    assert out["distill.binarization_cost"] == pytest.approx(0.075)  # the mean's
    assert out["twin.verify.a.acc"] == 0.75 and out["twin.verify.a.acc_std"] == 0.01
    one = binarization_cost({"verify.a.acc": 0.7}, {"verify.a.acc": 0.8}, ["a"])
    assert one["distill.binarization_cost"] == pytest.approx(0.1)


@pytest.mark.slow
def test_pipeline_with_the_twin_as_control_and_start(tmp_path: Path, monkeypatch, capsys) -> None:
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tiny_pipeline(
        **{
            "pipeline.name": "twin",
            "stages": ["teacher", "distill"],
            "distill.control": "twin",
            "distill.init": "twin",
            "distill.train": {"epochs": 2, "batch_size": 16, "eval_every": 1},
        }
    )
    write_pipeline(tmp_path, config, "twin.yaml")
    assert main(["run", "twin.yaml"]) == 0
    out = capsys.readouterr().out
    assert "[twin] done" in out and "binarization cost (pt)" in out
    run = tmp_path / "runs" / "twin"
    twin = json.loads((run / "twin" / "stage.json").read_text())
    distill = json.loads((run / "distill" / "stage.json").read_text())
    m = distill["metrics"]
    key = "verify.synthetic.acc"
    assert m[f"twin.{key}"] == twin["metrics"][key]
    assert m["distill.binarization_cost"] == pytest.approx(twin["metrics"][key] - m[key])
    assert m["train.images_seen"] == twin["metrics"]["train.images_seen"]  # the same budget
    curves = json.loads((run / "distill" / "learning_curve.json").read_text())
    assert set(curves) == {"1-bit student", "float twin"}
    for curve in curves.values():
        seen = [e["images_seen"] for e in curve]
        assert seen[0] == 0 and seen == sorted(seen) and len(seen) == 3  # start + 2 epochs
        assert all(0 <= e[key] <= 1 for e in curve)
    assert (run / "distill" / "learning_curve.png").stat().st_size > 5_000
    assert (run / "twin" / "learning_curve.png").is_file()
    # the twin is a float model: its weights are no signs
    twin_state = torch.load(run / "twin" / "twin.pt", weights_only=True)
    assert twin_state["args"]["binary"] is False
    # a second run executes nothing; the parent run carries the cost for compare
    assert main(["run", "twin.yaml"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-test")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    parent = next(r for r in runs if "facekd.stage" not in r.data.tags)
    assert "distill.binarization_cost" in parent.data.metrics
    stage = next(r for r in runs if r.data.tags.get("facekd.stage") == "distill")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(stage.info.run_id)}
    assert "learning_curve.png" in artifacts
