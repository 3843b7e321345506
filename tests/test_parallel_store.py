"""Runs started at once on a new checkout share one embedded MLflow store: its creation and
migration are serialised (``pipelines.tracking.runs.store_lock``), so none dies in the race."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_pipeline import tiny_pipeline, write_pipeline

ROOT = Path(__file__).resolve().parents[1]
RUNS = 4


@pytest.mark.slow
def test_four_runs_started_at_once_on_a_fresh_store_all_finish(tmp_path: Path) -> None:
    assert not (tmp_path / "mlruns").exists()  # a new checkout: no store yet
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(ROOT)
    procs = []
    for i in range(RUNS):
        config = tiny_pipeline(
            **{
                "pipeline": {"name": f"p{i}", "experiment": "facekd-parallel", "seed": i},
                "stages": ["teacher"],
                "data.synthetic.identities": 6,
            }
        )
        path = write_pipeline(tmp_path, config, f"p{i}.yaml")
        log = open(tmp_path / f"p{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "pipelines.cli", "run", path.name],
                    cwd=tmp_path,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    codes = []
    for proc, log in procs:
        codes.append(proc.wait(timeout=600))
        log.close()
    logs = {i: (tmp_path / f"p{i}.log").read_text() for i in range(RUNS)}
    assert codes == [0] * RUNS, {i: logs[i][-2000:] for i, c in enumerate(codes) if c}
    for i in range(RUNS):
        assert (tmp_path / "runs" / f"p{i}" / "teacher" / "stage.json").is_file(), logs[i]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-parallel")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    parents = [r for r in runs if "facekd.stage" not in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == [f"p{i}" for i in range(RUNS)]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_store_lock_only_for_sqlite(tmp_path: Path) -> None:
    from pipelines.tracking.runs import store_lock

    db = tmp_path / "new" / "mlflow.db"
    with store_lock(f"sqlite:///{db}"):
        assert (tmp_path / "new" / "mlflow.db.lock").is_file()
    with store_lock("http://127.0.0.1:1"):
        pass  # a server serialises its own migrations: nothing to hold
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["mlflow.db.lock"]
