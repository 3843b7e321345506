"""``facekd --version``, ``facekd doctor`` and the global options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip().startswith("facekd 0.")


def test_doctor_reports_the_stack(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    facekd_cache: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["doctor", "--json"]) == 0
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    for name in ("torch", "Brevitas", "TensorFlow", "LCE", "onnx2tf", "MLflow", "CUDA"):
        assert checks[name]["ok"] and checks[name]["value"], name
    assert "NVIDIA DALI" in checks
    assert str(tmp_path / "mlruns" / "mlflow.db") in checks["tracking URI"]["value"]
    assert not (tmp_path / "mlruns").exists()  # looking is not creating
    assert checks["cache folder"]["value"].startswith(f"{facekd_cache} (FACEKD_CACHE")
    assert main(["doctor"]) == 0
    table = capsys.readouterr().out
    assert "TensorFlow" in table and "cache folder" in table


def test_doctor_flags_a_missing_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.orchestration import environment

    real = environment.package_version
    monkeypatch.setattr(
        environment, "package_version", lambda d: None if d == "onnx2tf" else real(d)
    )
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "! onnx2tf" in out and "1 problem(s): onnx2tf" in out


def test_verbose_before_or_after_the_command() -> None:
    from pipelines.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--verbose", "doctor"]).verbose
    assert parser.parse_args(["doctor", "--verbose"]).verbose
    assert parser.parse_args(["run", "p.yaml", "-v"]).verbose
    assert not parser.parse_args(["doctor"]).verbose


def test_bad_progress_interval_is_refused_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACEKD_PROGRESS_SECONDS", "soon")
    assert main(["run", "does-not-matter.yaml"]) == 2
    assert "FACEKD_PROGRESS_SECONDS must be a number of seconds > 0" in capsys.readouterr().err
