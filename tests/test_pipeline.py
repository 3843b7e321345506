"""End to end on synthetic faces: four stages, MLflow runs and metrics, cache and --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_pipeline import tiny_pipeline

from pipelines.cli import main

pytestmark = pytest.mark.slow

TINY = tiny_pipeline()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return work


def _runs(work: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-test")
    return mlflow.search_runs([exp.experiment_id], output_format="list")


def test_pipeline_runs_logs_and_caches(workdir, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert "LceBconv2d coverage" in out and "mlflow ui --backend-store-uri" in out

    runs = _runs(workdir)
    stages = {r.data.tags.get("facekd.stage"): r for r in runs if "facekd.stage" in r.data.tags}
    parents = [r for r in runs if "facekd.stage" not in r.data.tags]
    assert set(stages) == {"teacher", "distill", "export", "evaluate"} and len(parents) == 1
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in stages.values())
    t, d, x, e = (stages[s].data.metrics for s in ("teacher", "distill", "export", "evaluate"))
    for key in (
        "verify.synthetic.acc",
        "verify.synthetic.auc",
        "verify.synthetic.tar_far1e-3",
        "model.params",
    ):
        assert key in t
    assert 0.0 <= t["verify.synthetic.acc"] <= 1.0
    assert "train.loss" in d and "verify.synthetic.acc" in d
    assert x["export.bconv_coverage"] == 1.0 and x["export.cosine_min"] >= 0.99
    for key in (
        "bench.latency_ms_p50",
        "bench.fps",
        "bench.float_latency_ms_p50",
        "bench.speedup_vs_float",
        "verify.synthetic.acc",
        "model.size_bytes",
    ):
        assert key in e
    assert stages["distill"].data.params["distill.train.epochs"] == "1"
    # artifacts went to the store
    import mlflow

    names = {a.path for a in mlflow.MlflowClient().list_artifacts(stages["export"].info.run_id)}
    assert {"student_lce.tflite", "student.onnx", "export_report.json"} <= names

    # the same command again: nothing runs, no new MLflow run
    assert main(["run", "tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out
    assert len(_runs(workdir)) == len(runs)

    # a distill setting changes: teacher is reused, the rest re-runs
    assert main(["run", "tiny.yaml", "--set", "distill.train.lr=0.005"]) == 0
    out = capsys.readouterr().out
    assert "[teacher] up to date" in out and "[distill] running" in out
    assert "[evaluate] running" in out
    record = json.loads((workdir / "runs/tiny/distill/stage.json").read_text())
    assert (workdir / "runs/tiny/distill/checkpoints/last.ckpt").is_file()  # resumable
    assert record["metrics"]["model.params"] > 0

    # --only with --force re-runs just that stage
    assert (
        main(
            ["run", "tiny.yaml", "--set", "distill.train.lr=0.005", "--only", "evaluate", "--force"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "[evaluate] running" in out and "[distill] running" not in out


def test_bad_config_exits_2_before_running(workdir, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    bad = workdir / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "distill": {**TINY["distill"], "epochs": 3}}))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "distill.epochs: unknown key" in err
    assert main(["run", "tiny.yaml", "--only", "bogus"]) == 2


def test_interrupted_stage_resumes_from_its_last_checkpoint(workdir, monkeypatch, capsys) -> None:
    """A stage whose record is missing but whose checkpoint matches resumes, not restarts."""
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "tiny.yaml", "--only", "teacher"]) == 0
    stage = workdir / "runs/tiny/teacher"
    record = json.loads((stage / "stage.json").read_text())
    assert (stage / "checkpoints/last.ckpt").is_file()
    # simulate a crash after the last epoch's checkpoint, before the stage finished
    (stage / "stage.json").unlink()
    (stage / "running.json").write_text(json.dumps({"fingerprint": record["fingerprint"]}))
    capsys.readouterr()
    assert main(["run", "tiny.yaml", "--only", "teacher"]) == 0
    assert "[teacher] running" in capsys.readouterr().out
    resumed = json.loads((stage / "stage.json").read_text())
    assert resumed["fingerprint"] == record["fingerprint"]
    # resumed at the end of training: the weights are those of the checkpointed run
    assert resumed["outputs"]["teacher"]["sha256"] == record["outputs"]["teacher"]["sha256"]
