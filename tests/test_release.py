"""Team setting end to end: a real ``mlflow server`` on 127.0.0.1, two pipeline runs against
it, ``facekd compare``, ``facekd release``, and the released model loaded back through MLflow."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_pipeline import tiny_pipeline

from pipelines.cli import main
from pipelines.tracking.bundle import BundleError, load_bundle

pytestmark = pytest.mark.slow

EXPERIMENT = "facekd-team"
PIPELINE = tiny_pipeline(
    **{
        "pipeline": {"name": "team", "experiment": EXPERIMENT, "seed": 0},
        "evaluate": {"runs": 20, "warmup": 2, "instances": 1},
    }
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` with a sqlite backend and served artifacts in a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(root / "server.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def team(server, tmp_path_factory):
    """Two pipeline runs against the server: the second distils for one more epoch."""
    work = tmp_path_factory.mktemp("team")
    (work / "team.yaml").write_text(yaml.safe_dump(PIPELINE))
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = server
    try:
        assert main(["run", "team.yaml"]) == 0
        assert main(["run", "team.yaml", "--set", "distill.train.epochs=2"]) == 0
        yield work
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def test_compare_lists_both_runs_with_the_pareto_front(team: Path, capsys) -> None:
    capsys.readouterr()
    png = team / "pareto.png"
    assert main(["compare", "--experiment", EXPERIMENT, "--output", str(png), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "verify.mean.acc"  # one set: the mean is that set's accuracy
    references = [r for r in result["rows"] if r["kind"] == "reference"]
    rows = [r for r in result["rows"] if r["kind"] == "student"]
    assert len(rows) == 2  # the comparison run itself is never a row
    # the teacher as float and int8 TFLite, once though both pipelines measured them
    assert sorted(r["bits"] for r in references) == ["fp32", "int8"]
    assert all(r["fps"] > 0 and "synthetic" in r["accuracy"] for r in references)
    for row in rows:
        assert row["teacher"] == "vit_face_micro" and row["student"] == "birealface"
        assert row["method"] == "cosine" and row["bits"] == "W1A1"
        assert row["binary_macs"] > 0 and row["float_macs"] > 0 and row["params"] > 0
        assert row["fps"] > 0 and row["size_bytes"] > 0 and 0 <= row["accuracy"]["synthetic"] <= 1
        assert "synthetic" in row["teacher_accuracy"]
    accs = [r["accuracy"]["synthetic"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert result["rows"][0]["pareto"]  # the most accurate row (the fastest of ties) is on it
    assert png.stat().st_size > 10_000
    # the table and figure were logged to MLflow
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[EXPERIMENT],
        filter_string="tags.`facekd.kind` = 'comparison'",
        output_format="list",
    )
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"pareto.png", "comparison.json", "comparison.txt"} <= names
    assert main(["compare", "--experiment", EXPERIMENT, "--output", str(png), "--no-log"]) == 0
    table = capsys.readouterr().out
    assert "synthetic" in table.splitlines()[0] and "mean acc" in table.splitlines()[0]
    assert "sorted by verify.mean.acc" in table and "Pareto front" in table


def test_release_registers_a_loadable_model_and_a_verified_bundle(team: Path, capsys) -> None:
    import mlflow

    capsys.readouterr()
    assert main(["compare", "--experiment", EXPERIMENT, "--json", "--no-log"]) == 0
    best = json.loads(capsys.readouterr().out)["rows"][0]["run_id"]
    releases = team / "releases"
    assert main(["release", best, "--name", "team-student", "--output", str(releases)]) == 0
    bundle_dir = releases / "team-student" / "1"
    files = {p.name for p in bundle_dir.iterdir()}
    assert files == {
        "student_lce.tflite",
        "student_float.tflite",
        "student.onnx",
        "model_card.md",
        "metrics.json",
        "SHA256SUMS",
    }
    card = (bundle_dir / "model_card.md").read_text()
    for text in ("(x - 127.5) / 128", "32-d embedding", "vit_face_micro", "| synthetic |"):
        assert text in card
    assert "cores" in card  # the machine the latencies were measured on
    assert json.loads((bundle_dir / "metrics.json").read_text())["source_run"] == best

    bundle = load_bundle(bundle_dir)
    faces = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    expected = bundle.embed(faces)
    model = mlflow.pyfunc.load_model("models:/team-student/1")
    got = model.predict(faces)
    assert got.shape == (5, 32)
    np.testing.assert_array_equal(got, expected)
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 112, 112, 3)
    pyfunc = mlflow.models.get_model_info("models:/team-student/1").flavors["python_function"]
    assert "model_code_path" in pyfunc and "python_model" not in pyfunc  # code, not a pickle

    # never overwritten: the same version again is refused; without --version the next one
    err_args = ["release", best, "--name", "team-student", "--version", "1"]
    assert main([*err_args, "--output", str(releases)]) == 2
    assert "already registered" in capsys.readouterr().err
    assert main(["release", best, "--name", "team-student", "--output", str(releases)]) == 0
    assert (releases / "team-student" / "2").is_dir()

    # a damaged bundle is refused on load
    damaged = shutil.copytree(bundle_dir, team / "damaged")
    data = bytearray((damaged / "student_lce.tflite").read_bytes())
    data[-100] ^= 0xFF
    (damaged / "student_lce.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match SHA256SUMS"):
        load_bundle(damaged)
    (damaged / "student.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(damaged)


def test_release_of_an_unknown_run_is_refused(team: Path, capsys) -> None:
    assert main(["release", "0" * 32, "--name", "x", "--output", str(team / "r")]) == 2
    assert "not found" in capsys.readouterr().err


def test_model_card_lists_every_set_and_the_mean() -> None:
    from types import SimpleNamespace

    from pipelines.tracking.release import model_card

    metrics = {"verify.mean.acc": 0.8, "verify.threshold_at_far": 0.31}
    for name, acc in (("lfw", 0.9), ("cfp_fp", 0.7), ("agedb_30", 0.8)):
        metrics.update({f"verify.{name}.acc": acc, f"verify.{name}.acc_at_far": acc - 0.1})
        metrics[f"teacher.verify.{name}.acc"] = acc + 0.05
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="r1"),
        data=SimpleNamespace(tags={"facekd.eval_set": "lfw,cfp_fp,agedb_30"}, metrics=metrics),
    )
    card = model_card("m", "1", run, 128, {})
    rows = [line for line in card.splitlines() if line.startswith("| ") and "0." in line]
    assert [r.split("|")[1].strip() for r in rows[:4]] == ["lfw", "cfp_fp", "agedb_30", "mean"]
    assert "| 0.8000 |" in rows[0] and "0.9500" in rows[0]  # at the fixed threshold; teacher
    assert "cosine >= 0.3100" in card


def _card_run(metrics: dict, tags: dict | None = None):
    from types import SimpleNamespace

    return SimpleNamespace(
        info=SimpleNamespace(run_id="r1"),
        data=SimpleNamespace(tags={"facekd.eval_set": "lfw", **(tags or {})}, metrics=metrics),
    )


PRIVACY = {
    "privacy.teacher.inversion.ssim": 0.611,
    "privacy.teacher.inversion.psnr": 17.25,
    "privacy.teacher.inversion.accept": 0.875,
    "privacy.teacher.inversion_sign.accept": 0.5,
    "privacy.teacher.templates.acc": 0.9625,
    "privacy.twin.gradient_b1.psnr": 24.5,
    "privacy.twin.gradient_b1.accept": 0.75,
    "privacy.student.inversion.ssim": 0.222,
    "privacy.student.inversion.psnr": 11.5,
    "privacy.student.inversion.accept": 0.125,
    "privacy.student.inversion_sign.ssim": 0.111,
    "privacy.student.gradient_b1.psnr": 9.75,
    "privacy.student.gradient_b4.accept": 0.0,
    "privacy.student.templates.acc": 0.9,
    "privacy.student.templates.sign_acc": 0.85,
    "privacy.judge.threshold": 0.4321,
    "privacy.judge.accept_genuine": 0.9375,
    "privacy.sanity.gradient_b1.psnr": 35.5,
}


def _table_row(card: str, label: str) -> list[str]:
    line = next(line for line in card.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.split("|")[1:-1]]


def test_model_card_privacy_section_states_the_leakage() -> None:
    from pipelines.tracking.release import model_card

    card = model_card("m", "1", _card_run({"verify.lfw.acc": 0.9, **PRIVACY}), 128, {})
    section = card[card.index("## Privacy") : card.index("## Known limits")]
    (line,) = [x for x in section.splitlines() if x.startswith("| model |")]
    header = [c.strip() for c in line.split("|")[1:-1]]
    assert header[0] == "model" and len(header) == 13
    assert header[1:4] == ["inversion SSIM", "inversion PSNR dB", "inversion accept"]
    assert header[-2:] == ["template acc", "sign template acc"]
    teacher, twin, student = (
        _table_row(section, x) for x in ("teacher", "float twin", "1-bit student")
    )
    assert teacher[1:5] == ["0.611", "17.25", "0.875", "n/a"]
    assert teacher[6] == "0.500" and teacher[7:11] == ["n/a"] * 4 and teacher[11] == "0.9625"
    assert twin[7:9] == ["24.50", "0.750"] and twin[1] == "n/a"
    assert student[1:5] == ["0.222", "11.50", "0.125", "0.111"]
    assert student[7] == "9.75" and student[10] == "0.000"
    assert student[11:] == ["0.9000", "0.8500"]
    assert "threshold 0.4321" in section and "accepts 0.938 of real pairs" in section
    assert "FAR 1e-3" in section and "lower SSIM / PSNR / accept = less leakage" in section
    assert "PSNR 35.50 dB" in section
    assert "No privacy analysis" not in card
    # given explicitly (from the privacy stage run) instead of the run's metrics
    card = model_card("m", "1", _card_run({"verify.lfw.acc": 0.9}), 128, {}, PRIVACY)
    assert _table_row(card, "1-bit student")[3] == "0.125"


def test_model_card_without_privacy_metrics_says_so() -> None:
    from pipelines.tracking.release import model_card

    card = model_card("m", "1", _card_run({"verify.lfw.acc": 0.9}), 128, {})
    assert "## Privacy\nNo privacy analysis was run for this release" in card
    assert "| 1-bit student |" not in card and "Judge:" not in card
    assert card.index("## Speed") < card.index("## Privacy") < card.index("## Known limits")


def test_privacy_metrics_of_the_summary_or_the_privacy_stage_run() -> None:
    from types import SimpleNamespace

    from pipelines.tracking.release import privacy_metrics

    stage = _card_run({"privacy.student.inversion.accept": 0.25, "verify.x.acc": 1.0})

    class Client:
        def get_run(self, run_id: str):
            if run_id != "stage1":
                raise KeyError(run_id)
            return stage

    client = Client()
    summary = _card_run({"bench.fps": 1.0, "privacy.student.inversion.accept": 0.5})
    assert privacy_metrics(client, summary) == {"privacy.student.inversion.accept": 0.5}
    linked = _card_run({"bench.fps": 1.0}, {"facekd.run.privacy": "stage1"})
    assert privacy_metrics(client, linked) == {"privacy.student.inversion.accept": 0.25}
    gone = _card_run({"bench.fps": 1.0}, {"facekd.run.privacy": "deleted"})
    assert privacy_metrics(client, gone) == {}
    assert privacy_metrics(SimpleNamespace(), _card_run({"bench.fps": 1.0})) == {}
