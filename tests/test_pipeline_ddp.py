"""``strategy: ddp`` inside a pipeline on CPU: Lightning re-executes ``facekd run`` for rank 1.

The worker process must join the distill stage's training without taking the output lock,
opening MLflow runs or writing records; rank 0 alone saves, exports and logs.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline import TINY

pytestmark = pytest.mark.slow  # two processes: about a minute


def test_ddp_strategy_in_a_pipeline(tmp_path: Path) -> None:
    config = copy.deepcopy(TINY)
    config["pipeline"]["name"] = "tiny_ddp"
    config["stages"] = ["teacher", "distill"]
    config["distill"]["train"].update(
        {"strategy": "ddp", "devices": 2, "epochs": 2, "batch_size": 8}
    )
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    facekd = [sys.executable, "-m", "pipelines.cli", "run", "ddp.yaml"]
    done = subprocess.run(
        facekd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (tmp_path / "runs" / "tiny_ddp" / "facekd.log").read_text()  # Lightning's lines
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # two processes trained
    assert "another facekd run is using" not in done.stderr

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-test")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    stages = sorted(r.data.tags.get("facekd.stage", "parent") for r in runs)
    assert stages == ["distill", "parent", "teacher"]  # no runs from the worker process
    assert all(r.info.status == "FINISHED" for r in runs)
    distill = next(r for r in runs if r.data.tags.get("facekd.stage") == "distill")
    assert "train.loss" in distill.data.metrics
    assert (tmp_path / "runs" / "tiny_ddp" / "distill" / "student.pt").is_file()
