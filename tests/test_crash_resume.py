"""SIGKILL at any point of a real ``facekd run`` process; the same command resumes it.

One pipeline is stopped four times (SIGKILL mid-epoch in teacher training, SIGTERM while
distilling, SIGKILL during export and during the benchmark) and run again after each stop.
Training checkpoints every 4 of an epoch's 9 steps (with the loader's position), so the kills
land after a mid-epoch checkpoint and the runs resume in the middle of an epoch, not at its
start. The final result must equal a run that was never interrupted, finished stages must
not run again, and MLflow must hold one parent run with one finished run per stage, none
left RUNNING.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny_pipeline import tiny_pipeline

pytestmark = pytest.mark.slow

PIPELINE = tiny_pipeline(
    **{
        "pipeline": {"name": "crash", "experiment": "facekd-crash", "seed": 3},
        "data.eval_fraction": 0.25,
        "data.synthetic": {"identities": 16, "images_per_identity": 12, "seed": 1},
        "teacher.train.epochs": 4,
        "teacher.train.checkpoint_every_steps": 4,
        "distill.train": {"epochs": 4, "batch_size": 16, "checkpoint_every_steps": 4},
        "evaluate": {"runs": 200, "warmup": 5, "instances": 3},
    }
)


def _start(work: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "crash.yaml", *extra],
        cwd=work,
        env=env,
        stdout=open(log, "a"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )


def _kill_when(
    proc: subprocess.Popen,
    ready: Path,
    log: Path,
    delay: float = 0.0,
    sig: signal.Signals = signal.SIGKILL,
) -> None:
    """Send ``sig`` (SIGKILL) to ``proc`` once ``ready`` exists (plus ``delay`` seconds)."""
    deadline = time.time() + 300
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before {ready}:\n{log.read_text()}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{ready} never appeared:\n{log.read_text()}")
        time.sleep(0.05)
    time.sleep(delay)
    assert proc.poll() is None, f"finished before the kill:\n{log.read_text()}"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    # SIGTERM: the step in progress is finished and checkpointed, then "interrupted" (130)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), log.read_text()


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_anywhere_then_same_command_resumes(tmp_path: Path) -> None:
    work = tmp_path
    (work / "crash.yaml").write_text(yaml.safe_dump(PIPELINE))
    out = work / "runs" / "crash"
    log = work / "run.log"

    # 1. killed in the first teacher epoch, after its step-4 checkpoint
    _kill_when(_start(work, log), out / "teacher/checkpoints/last.ckpt", log)
    assert not (out / "teacher/stage.json").exists()
    ckpt = torch.load(out / "teacher/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] % 9, "the kill was meant to land mid-epoch"

    # 2. resumed mid-epoch: the teacher continues after its last checkpointed batch;
    # SIGTERM while distilling: the step in progress is checkpointed, then it stops
    _kill_when(_start(work, log), out / "distill/checkpoints/last.ckpt", log, 0.0, signal.SIGTERM)
    text = log.read_text()
    assert "resuming teacher from" in text and "[teacher] resuming" in text
    assert re.search(r"resuming teacher from \S+ \(epoch 1, after batch \d of 9, global step", text)
    assert "interrupted; run the same command again" in text
    assert (out / "teacher/stage.json").exists() and not (out / "distill/stage.json").exists()
    teacher_done = json.loads((out / "teacher/stage.json").read_text())["finished_at"]

    # 3. killed during export, 4. killed during the benchmark
    _kill_when(_start(work, log), out / "export/running.json", log, delay=1.0)
    assert re.search(r"resuming distill from \S+ \((epoch|after epoch) \d", log.read_text())
    assert not (out / "export/stage.json").exists()
    _kill_when(_start(work, log), out / "evaluate/running.json", log, delay=0.3)
    assert not (out / "evaluate/stage.json").exists()

    # 5. the same command finishes the pipeline
    proc = _start(work, log)
    assert proc.wait(timeout=600) == 0, log.read_text()
    # finished stages never ran again
    assert json.loads((out / "teacher/stage.json").read_text())["finished_at"] == teacher_done
    assert log.read_text().count("[teacher] up to date") >= 3
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"

    # the same result as a run that was never interrupted
    clean = _start(
        work,
        work / "clean.log",
        "--set",
        "pipeline.output_dir=runs/clean",
        "--set",
        "stages=[teacher, distill]",
    )
    assert clean.wait(timeout=600) == 0, (work / "clean.log").read_text()
    for stage, artifact in (("teacher", "teacher.pt"), ("distill", "student.pt")):
        resumed, uninterrupted = (
            _state(out / stage / artifact),
            _state(work / "runs/clean" / stage / artifact),
        )
        assert resumed.keys() == uninterrupted.keys()
        for key in resumed:
            assert torch.equal(resumed[key], uninterrupted[key]), f"{stage}: {key} differs"

    # MLflow: one coherent parent run, one run per stage, nothing left RUNNING
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-crash")
    runs = mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`facekd.output_dir` = '{out.resolve()}'",
        output_format="list",
    )
    parents = [r for r in runs if "facekd.stage" not in r.data.tags]
    stages = [r for r in runs if "facekd.stage" in r.data.tags]
    assert len(parents) == 1, [(r.info.run_id, r.info.status) for r in parents]
    assert sorted(r.data.tags["facekd.stage"] for r in stages) == sorted(PIPELINE["stages"])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in stages)
    teacher_run = next(r for r in stages if r.data.tags["facekd.stage"] == "teacher")
    history = mlflow.MlflowClient().get_metric_history(teacher_run.info.run_id, "epoch")
    assert sorted({int(m.step) for m in history}) == [1, 2, 3, 4]
