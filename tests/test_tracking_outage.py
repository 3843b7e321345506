"""A tracking server that stops answering in the middle of a run: training goes on, metrics
wait in the run folder and are sent when it answers again, or by ``facekd sync``."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from tiny_pipeline import tiny_pipeline

from pipelines.cli import main
from pipelines.tracking.runs import OUTBOX, StageRun


class _Outage:
    """Makes MlflowClient.log_batch fail while ``down`` is true, counting the failures."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down, self.failures = False, 0
        original = mlflow.MlflowClient.log_batch

        def log_batch(client, run_id, *args, **kwargs):
            if self.down:
                self.failures += 1
                raise ConnectionError("Connection refused")
            return original(client, run_id, *args, **kwargs)

        monkeypatch.setattr(mlflow.MlflowClient, "log_batch", log_batch)


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key)]


def test_metrics_wait_in_the_outbox_and_follow_in_order(tmp_path, monkeypatch, capsys) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("outbox")
    outage = _Outage(monkeypatch)
    with mlflow.start_run() as run:
        stage = StageRun(mlflow, run.info.run_id, tmp_path / "stage" / OUTBOX)
        stage.metrics({"loss": 3.0}, step=1)
        outage.down = True
        stage.metrics({"loss": 2.0}, step=2)
        stage.metrics({"loss": 1.5, "acc": 0.6}, step=3)
        assert (tmp_path / "stage" / OUTBOX).is_file() and outage.failures == 2
        assert _history(run.info.run_id, "loss") == [(1, 3.0)]
        outage.down = False
        stage.metrics({"loss": 1.0}, step=4)  # the server answers: the kept ones go first
    assert sorted(_history(run.info.run_id, "loss")) == [(1, 3.0), (2, 2.0), (3, 1.5), (4, 1.0)]
    assert _history(run.info.run_id, "acc") == [(3, 0.6)]
    assert not (tmp_path / "stage" / OUTBOX).exists()
    err = capsys.readouterr().err
    assert err.count("the tracking server does not answer") == 1  # said once, not per epoch


def test_pipeline_trains_through_an_outage(tmp_path, monkeypatch, capsys) -> None:
    """The server stops answering after the first teacher epoch and answers again at the
    third: training never stops, and every epoch's metrics reach MLflow in the end."""
    config = tiny_pipeline(**{"stages": ["teacher"], "teacher.train.epochs": 3})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outage = _Outage(monkeypatch)
    original = StageRun.metrics
    kept: list[bool] = []

    def metrics(self, values, step=None):
        outage.down = step in (1, 2)  # epochs 1 and 2 are logged while it is down
        original(self, values, step)
        kept.append(self.outbox is not None and self.outbox.is_file())

    monkeypatch.setattr(StageRun, "metrics", metrics)
    assert main(["run", "tiny.yaml"]) == 0
    assert outage.failures >= 2 and any(kept)
    assert "the tracking server does not answer" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "teacher" / OUTBOX).exists()  # all sent
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-test")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    teacher = next(r for r in runs if r.data.tags.get("facekd.stage") == "teacher")
    assert sorted(s for s, _ in _history(teacher.info.run_id, "epoch")) == [1, 2, 3]


def test_facekd_sync_sends_what_a_run_kept(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipelines.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment("sync")  # not an experiment id cached by an earlier test
    outage = _Outage(monkeypatch)
    with mlflow.start_run() as run:
        outage.down = True
        StageRun(mlflow, run.info.run_id, tmp_path / "runs/x/distill" / OUTBOX).metrics(
            {"loss": 0.5}, step=7
        )
    outage.down = False
    assert main(["sync", "runs/x"]) == 0
    assert "sent 1 metric value(s) from 1 file(s)" in capsys.readouterr().out
    assert _history(run.info.run_id, "loss") == [(7, 0.5)]
    assert main(["sync", "runs/x"]) == 0  # nothing left: says so
    assert "nothing to send" in capsys.readouterr().out


def test_sync_of_a_missing_folder_names_it(tmp_path: Path, capsys) -> None:
    assert main(["sync", str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in capsys.readouterr().err
