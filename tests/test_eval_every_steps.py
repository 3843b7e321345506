"""Verification inside an epoch (``train.eval_every_steps``): learning-curve points between
epoch ends, seen by an observer (what a sweep reports to its trial), which can stop training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_pipeline import tiny_pipeline, write_pipeline

from pipelines.cli import main
from pipelines.training.fit import observing_evaluations


def _config(train: dict) -> dict:
    return tiny_pipeline(
        **{
            "pipeline.name": "steps",
            "stages": ["teacher", "distill"],
            "data.synthetic": {"identities": 8, "images_per_identity": 12, "seed": 0},
            "distill.train": {"epochs": 1, "batch_size": 16, **train},
        }
    )


def test_every_steps_adds_curve_points_and_reaches_observers(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_pipeline(tmp_path, _config({"eval_every_steps": 2}), "steps.yaml")
    seen: list[tuple[str, int]] = []
    with observing_evaluations(lambda stage, step, m: seen.append((stage, step))):
        assert main(["run", "steps.yaml"]) == 0
    curve = json.loads((Path("runs/steps/distill/learning_curve.json")).read_text())
    steps = [e["step"] for e in curve["1-bit student"]]
    # 67 training faces / 16 = 4 steps: the start, steps 2 and (the epoch's end) 4
    assert steps == [0, 2, 4]
    assert [s for st, s in seen if st == "distill"] == [0, 2, 4]


def test_an_observer_that_raises_stops_the_training(tmp_path, monkeypatch) -> None:
    class StopError(Exception):
        pass

    def stop_at_two(stage: str, step: int, metrics: dict) -> None:
        if stage == "distill" and step == 2:
            raise StopError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_pipeline(tmp_path, _config({"eval_every_steps": 2, "epochs": 3}), "steps.yaml")
    with observing_evaluations(stop_at_two), pytest.raises(StopError):
        main(["run", "steps.yaml"])
    assert not Path("runs/steps/distill/stage.json").exists()  # the stage did not finish
