"""``facekd sweep``: bad sweep files refused before any trial; a 4-trial sweep on synthetic
faces ends with a front and nested MLflow runs; a stopped sweep resumes; two workers on one
SQLite study run disjoint trials."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_pipeline import tiny_pipeline

from pipelines.cli import main
from pipelines.core.config import ConfigError
from pipelines.core.sweep_config import load_sweep
from pipelines.orchestration.sweep import StorageError, open_storage

ROOT = Path(__file__).resolve().parents[1]

SWEEP = {
    "space": {
        "distill.train.lr": {"float": [1.0e-4, 1.0e-2], "log": True},
        "distill.args.width": {"choices": [32, 64], "when": {"distill.student": "birealface"}},
    },
    "objectives": {"verify.mean.acc": "maximize", "bench.latency_ms_p50": "minimize"},
    "budget": {"trials": 4},
    "report_every_steps": 2,
    "pruner": {"name": "median", "startup_trials": 1},
}


def _write(folder: Path, sweep: dict | None = None, **changes) -> Path:
    config = tiny_pipeline(
        **{
            "pipeline.name": "sw",
            "data.synthetic": {"identities": 8, "images_per_identity": 12, "seed": 0},
            "distill.train": {"epochs": 2, "batch_size": 16},
            "evaluate": {"runs": 3, "warmup": 1, "instances": 1, "teacher_tflite": False},
            **changes,
        }
    )
    config["sweep"] = copy.deepcopy(SWEEP if sweep is None else sweep)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # objectives keep their order
    return path


def _bad(tmp_path: Path, **section_changes) -> str:
    sweep = copy.deepcopy(SWEEP)
    for key, value in section_changes.items():
        sweep[key] = value
    with pytest.raises(ConfigError) as err:
        load_sweep(_write(tmp_path, sweep))
    return str(err.value)


def test_bad_sweep_files_are_refused_with_the_key_named(tmp_path: Path) -> None:
    msg = _bad(tmp_path, space={"distill.train.lrr": {"float": [0.1, 0.2]}})
    assert "sweep.space.distill.train.lrr" in msg and "lrr" in msg
    msg = _bad(tmp_path, space={"distill.train.lr": {"float": [0.1, 0.1]}})
    assert "sweep.space.distill.train.lr" in msg and "empty range" in msg
    msg = _bad(tmp_path, space={"distill.train.lr": {"float": [-1.0, 0.1], "log": True}})
    assert "log scale needs a positive low end" in msg
    msg = _bad(tmp_path, space={"distill.args.width": {"choices": []}})
    assert "choices: empty" in msg
    msg = _bad(
        tmp_path,
        space={
            "distill.student": {"choices": ["birealface", "quicknet_small"]},
            "distill.args.width": {"choices": [32], "when": {"distill.student": "quiknet"}},
        },
    )
    assert "when.distill.student" in msg and "['quiknet'] not among its choices" in msg
    msg = _bad(tmp_path, space={"distill.train.lr": {"choices": [-1.0]}})
    assert "sweep.space.distill.train.lr = -1.0" in msg  # a value the schema refuses
    msg = _bad(tmp_path, objectives={"privacy.student.inversion.accept": "minimize"})
    assert "sweep.objectives.privacy.student.inversion.accept: no stage" in msg
    msg = _bad(tmp_path, objectives={"bench.latency_ms_p50": "minimize"})  # nothing to prune on
    assert "sweep.pruner.median: pruning needs an objective verify.<set>.acc" in msg
    msg = _bad(tmp_path, pruner={"name": "hyperband"})  # Optuna prunes single objectives only
    assert "only the median rule prunes" in msg
    with pytest.raises(ConfigError, match="no sweep: section"):
        load_sweep(_plain(tmp_path))


def _plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline()))
    return path


def test_pruning_without_an_accuracy_objective_is_refused_before_any_trial(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = {**copy.deepcopy(SWEEP), "objectives": {"bench.latency_ms_p50": "minimize"}}
    assert main(["sweep", str(_write(tmp_path, sweep))]) == 2
    err = capsys.readouterr().err
    assert "sweep.pruner.median: pruning needs an objective verify.<set>.acc" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("stage.json"))


def test_a_storage_that_does_not_answer_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="study storage postgresql://nobody@127.0.0.1:9/x"):
        open_storage("postgresql://nobody@127.0.0.1:9/x")


def _study(tmp_path: Path) -> list[dict]:
    import optuna

    storage = f"sqlite:///{tmp_path / 'runs' / 'sw' / 'optuna.db'}"
    study = optuna.load_study(study_name="sw", storage=storage)
    return [
        {"number": t.number, "state": t.state.name, "dir": t.user_attrs.get("output_dir")}
        for t in study.get_trials()
    ]


@pytest.mark.slow
def test_a_four_trial_sweep_ends_with_a_front_and_nested_runs(
    tmp_path, monkeypatch, capsys
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["sweep", str(_write(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "| trial | verify.mean.acc (max) | bench.latency_ms_p50 (min) |" in out
    trials = _study(tmp_path)
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and any(t["state"] == "COMPLETE" for t in trials)
    report = json.loads((tmp_path / "runs" / "sw" / "sweep-sw.json").read_text())
    assert report["front"] and (tmp_path / "runs" / "sw" / "sweep-sw.png").stat().st_size > 1000
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    sweep_run = report["mlflow_run_id"]
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`facekd.sweep.study` = 'sw'",
        output_format="list",
    )
    trial_runs = [r for r in runs if "facekd.sweep.trial" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {sweep_run}
    front_run = next(r for r in trial_runs if r.info.run_id == report["front"][0]["mlflow_run_id"])
    assert "distill.train.lr" in front_run.data.params
    assert front_run.data.tags["facekd.sweep.state"] == "complete"
    pruned = [r for r in trial_runs if r.data.tags.get("facekd.sweep.state") == "pruned"]
    assert all(r.info.status == "KILLED" for r in pruned)
    assert not any((Path(r.data.tags["facekd.output_dir"]) / "export").exists() for r in pruned)
    # the study's trials, ranked by `facekd compare --study`
    assert main(["compare", "--study", "sw", "--no-log"]) == 0
    assert front_run.info.run_id[:8] in capsys.readouterr().out


# one objective the distill stage logs: trials without export and evaluation (faster)
TRAIN_ONLY = {**SWEEP, "objectives": {"verify.mean.acc": "maximize"}, "pruner": {"name": "none"}}


def _sweep_process(tmp_path: Path, log: str, grace_s: int = 60) -> subprocess.Popen:
    env = {**os.environ, "FACEKD_PROGRESS_SECONDS": "1", "FACEKD_SWEEP_GRACE_S": str(grace_s)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "sweep", "sweep.yaml"],
        cwd=tmp_path, env=env, stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.mark.slow
def test_a_stopped_sweep_resumes_and_ends_with_its_budget(tmp_path: Path) -> None:
    _write(tmp_path, TRAIN_ONLY, stages=["teacher", "distill"])
    proc = _sweep_process(tmp_path, "first.log")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (tmp_path / "runs" / "sw" / "trials" / "trial-1" / "distill").exists():
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # like Ctrl-C: the running trial stops resumably
    assert proc.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-2000:]
    before = _study(tmp_path)
    assert any(t["state"] == "FAIL" for t in before)  # the interrupted trial
    proc = _sweep_process(tmp_path, "second.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-2000:]
    after = _study(tmp_path)
    assert sum(t["state"] == "COMPLETE" for t in after) == 4
    interrupted = next(t for t in before if t["state"] == "FAIL")
    resumed = [t for t in after if t["dir"] == interrupted["dir"] and t["state"] == "COMPLETE"]
    assert resumed  # continued in the interrupted trial's folder
    assert "interrupted trial(s) queued to continue" in (tmp_path / "second.log").read_text()


@pytest.mark.slow
def test_two_workers_on_one_sqlite_study_run_disjoint_trials(tmp_path: Path) -> None:
    _write(tmp_path, TRAIN_ONLY, stages=["teacher", "distill"])
    procs = [_sweep_process(tmp_path, f"worker{i}.log") for i in range(2)]
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=900) == 0, (tmp_path / f"worker{i}.log").read_text()[-2000:]
    trials = _study(tmp_path)
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert len(complete) >= 4
    dirs = [t["dir"] for t in trials if t["dir"]]
    assert len(dirs) == len(set(dirs))  # no two trials in one folder
    workers = {(tmp_path / f"worker{i}.log").read_text().count("=== trial ") for i in range(2)}
    assert all(n >= 1 for n in workers)  # both took trials


@pytest.mark.slow
def test_locked_twins_are_trained_once_and_reused(tmp_path, monkeypatch) -> None:
    from pipelines.core.config import validate_raw
    from pipelines.orchestration.ablation import Variant, run_variants

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = tiny_pipeline(
        **{"stages": ["teacher", "distill"], "distill.control": "twin", "pipeline.name": "lt"}
    )
    runs = []
    for name in ("a", "b"):  # two trials with the same twin
        raw["pipeline"]["output_dir"] = str(tmp_path / "runs" / name)
        runs.append(Variant(name, validate_raw(copy.deepcopy(raw), "lt"), True))
    lines: list[str] = []
    done = run_variants(runs, tmp_path / "runs", log=lines.append, lock_twins=True)
    assert all("twin.verify.synthetic.acc" in r["distill"]["metrics"] for _, r, _ in done)
    assert sum("[twin] running" in line for line in lines) == 1, lines  # trained once
    assert (tmp_path / "runs" / "b" / "twin").resolve() == (
        tmp_path / "runs" / "a" / "twin"
    ).resolve()


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_in_its_folder(tmp_path: Path) -> None:
    _write(tmp_path, {**TRAIN_ONLY, "budget": {"trials": 2}}, stages=["teacher", "distill"])
    proc = _sweep_process(tmp_path, "first.log", grace_s=3)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (tmp_path / "runs" / "sw" / "trials" / "trial-0" / "distill").exists():
            break
        time.sleep(0.5)
    proc.kill()  # SIGKILL: no chance to record anything
    proc.wait(timeout=60)
    assert any(t["state"] == "RUNNING" for t in _study(tmp_path))
    time.sleep(4)  # past the grace period: the next worker takes the trial for dead
    proc = _sweep_process(tmp_path, "second.log", grace_s=3)
    assert proc.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-2000:]
    after = _study(tmp_path)
    killed = next(t for t in after if t["number"] == 0)
    assert killed["state"] == "FAIL"  # failed by the heartbeat check, then retried
    retried = [t for t in after if t["dir"] == killed["dir"] and t["number"] != 0]
    assert retried and retried[0]["state"] == "COMPLETE"
    assert sum(t["state"] == "COMPLETE" for t in after) == 2
