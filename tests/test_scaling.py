"""The scaling benchmark: log-linear fits, the answers they support (and those they do not),
and one recipe run at three budgets as student and twin."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_pipeline import tiny_pipeline

from pipelines.core.config import ConfigError
from pipelines.evaluation.scaling import crossing, fit_log, scaling_report, scaling_table
from pipelines.orchestration.scaling import budget_variants

ROOT = Path(__file__).resolve().parents[1]


def _points(student: list[float], twin: list[float], images=(1e4, 4e4, 1.6e5)) -> list[dict]:
    return [
        {"steps": int(i / 64), "images_seen": i, "student_acc": s, "twin_acc": t}
        for i, s, t in zip(images, student, twin, strict=True)
    ]


def test_fit_recovers_a_line_in_log_images() -> None:
    images = [1e3, 1e4, 1e5]
    fit = fit_log(images, [0.5 + 0.1 * math.log10(i) for i in images])
    assert fit.slope == pytest.approx(0.1) and fit.intercept == pytest.approx(0.5)
    assert fit.r2 == pytest.approx(1.0) and fit.n == 3
    assert fit.images_for(1.2) == pytest.approx(1e7)
    with pytest.raises(ValueError, match="two or more"):
        fit_log([1e3], [0.5])
    with pytest.raises(ValueError, match="same budget"):
        fit_log([1e3, 1e3], [0.5, 0.6])


def test_answers_within_reach_and_beyond() -> None:
    # student: 0.60, 0.66, 0.72 (+0.0997/decade); twin 0.70, 0.74, 0.78; teacher 0.90
    report = scaling_report(_points([0.60, 0.66, 0.72], [0.70, 0.74, 0.78]), 0.90)
    texts = [a["text"] for a in report["answers"]]
    reach_twin, meet, teacher = report["answers"]
    assert reach_twin["images"] == pytest.approx(1.6e5 * 10 ** (0.06 / 0.0997), rel=0.02)
    assert "student reaches the twin (0.780): ~" in texts[0]
    assert meet["images"] is not None and "lines meet at" in meet["text"]
    # teacher - 10 pt = 0.80: (0.80 - 0.72) / 0.0997 decades beyond the largest budget
    assert teacher["images"] == pytest.approx(1.6e5 * 10 ** (0.08 / 0.0997), rel=0.02)
    table = scaling_table(report)
    assert "| 2500 | 160,000 | 0.7200 | 0.7800 | +6.0 |" in table and "R^2 1.00" in table


def test_the_fit_says_plainly_when_it_does_not_support_an_answer() -> None:
    flat = scaling_report(_points([0.70, 0.69, 0.70], [0.75, 0.76, 0.77]), 0.95)
    assert all(a["images"] is None for a in flat["answers"])
    assert (
        "not supported by the fit: the student's accuracy does not rise"
        in flat["answers"][0]["text"]
        or "explains too little" in flat["answers"][0]["text"]
    )
    assert "do not meet" in flat["answers"][1]["text"]  # slope below the twin's
    two = scaling_report(_points([0.6, 0.7], [0.7, 0.75], images=(1e4, 1e5)), 0.9)
    assert "only 2 budgets measured" in two["answers"][0]["text"]
    slow = scaling_report(_points([0.60, 0.61, 0.62], [0.63, 0.635, 0.64]), 0.99)
    far = slow["answers"][-1]
    assert far["images"] is None and "too far to extrapolate" in far["text"]
    noisy = scaling_report(_points([0.60, 0.75, 0.62], [0.7, 0.7, 0.7]), 0.9)
    assert "explains too little (R^2" in noisy["answers"][0]["text"]
    line = fit_log([1e4, 1e5, 1e6], [0.6, 0.7, 0.8])
    assert crossing(line, line, 1e6)["images"] is None  # parallel lines never meet


def _tiny_ablation(tmp_path: Path) -> Path:
    config = tiny_pipeline(
        **{
            "pipeline.output_dir": str(tmp_path / "runs"),
            "stages": ["teacher", "distill", "export", "evaluate"],
            "distill.losses": {"cosine": 1.0},
        }
    )
    config["variants"] = {"base": {}, "other": {"distill.train.lr": 0.01}}
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_budget_variants_train_only_and_refuse_bad_budgets(tmp_path: Path) -> None:
    path = _tiny_ablation(tmp_path)
    runs = budget_variants(path, "base", [6, 2])
    assert [r.name for r in runs] == ["base-steps2", "base-steps6"]
    cfg = runs[1].config
    assert cfg.stages == ["teacher", "twin", "distill"] and cfg.distill.control == "twin"
    assert cfg.distill.train.max_steps == 6 and cfg.pipeline.name == "tiny-base-steps6"
    assert Path(cfg.output_dir()) == tmp_path / "runs" / "scaling" / "base-steps6"
    with pytest.raises(ConfigError, match="no variant nope"):
        budget_variants(path, "nope", [2])
    with pytest.raises(ConfigError, match="repeats a budget"):
        budget_variants(path, "base", [2, 2])
    with pytest.raises(ConfigError, match=">= 1"):
        budget_variants(path, "base", [0])


@pytest.mark.slow
def test_scaling_benchmark_runs_a_recipe_at_three_budgets(tmp_path: Path) -> None:
    path = _tiny_ablation(tmp_path)
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), str(path),
         "--variant", "base", "--budgets", "2", "4", "6"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads((tmp_path / "runs" / "scaling" / "base.json").read_text())
    points = report["points"]
    assert [p["steps"] for p in points] == [2, 4, 6]
    assert [p["images_seen"] for p in points] == [32, 64, 96]  # batch 16
    assert all(0 <= p["student_acc"] <= 1 and 0 <= p["twin_acc"] <= 1 for p in points)
    assert report["teacher_acc"] is not None and len(report["answers"]) == 3
    assert (tmp_path / "runs" / "scaling" / "base.png").stat().st_size > 1000
    assert "| 6 | 96 |" in out.stdout and "student reaches the twin" in out.stdout
    # one teacher stage, shared with the ablation's variants
    assert (tmp_path / "runs" / "scaling" / "base-steps2" / "teacher").is_symlink()
