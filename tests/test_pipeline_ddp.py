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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_share_an_epoch(tmp_path: Path) -> None:
    """2 nodes x 1 process (gloo on 127.0.0.1): node 1 waits while node 0 trains the
    teacher and builds the distillation targets, then both train the student on disjoint
    shards of the streamed images (half the steps of one process); one MLflow parent run."""
    from faces.synthetic import write_synthetic_faces

    faces = write_synthetic_faces(tmp_path / "faces", 12, 8, seed=2)
    config = copy.deepcopy(TINY)
    config["pipeline"]["name"] = "two_nodes"
    config["stages"] = ["teacher", "distill"]
    config["data"] = {
        "train": str(faces),
        "eval_fraction": 0.34,
        "eval_pairs": 40,
        "cache_in_memory": False,  # read on demand by a loader worker on each node
        "num_workers": 1,
    }
    config["distill"]["train"].update(
        {"strategy": "ddp", "num_nodes": 2, "devices": 1, "epochs": 2, "batch_size": 8}
    )
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump(config))
    base = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK")}
    base.pop("MLFLOW_TRACKING_URI", None)
    base.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE="2",
    )
    facekd = [sys.executable, "-m", "pipelines.cli", "run", "nodes.yaml"]
    nodes = [
        subprocess.Popen(
            facekd,
            cwd=tmp_path,
            env={**base, "NODE_RANK": str(rank)},
            stdout=open(tmp_path / f"node{rank}.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]
    codes = [n.wait(timeout=900) for n in nodes]
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + "\n---\n" + logs[1][-3000:]
    assert "[teacher] waiting for rank 0" in logs[1]
    library_log = tmp_path / "runs" / "two_nodes" / "facekd.log"  # other libraries' lines
    text = "".join(logs) + (library_log.read_text() if library_log.is_file() else "")
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-test")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert sorted(r.data.tags.get("facekd.stage", "parent") for r in runs) == [
        "distill",
        "parent",
        "teacher",
    ]
    distill = next(r for r in runs if r.data.tags.get("facekd.stage") == "distill")
    images = int(distill.data.metrics["train.images"])  # 8 people x 8 faces
    assert images == 64
    # each rank took 64 / 2 / 8 = 4 steps per epoch: every image once per epoch in all
    assert distill.data.metrics["train.steps"] == 2 * images / 2 / 8
    assert distill.data.metrics["train.images_seen"] == 2 * images
