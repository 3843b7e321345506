"""pipelines.orchestration.summary: the teacher/student table, the parent run's metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.config import load_config
from pipelines.orchestration.summary import acc_delta_pt, run_summary, summary_table

ROOT = Path(__file__).resolve().parents[1]


def _records(pytorch: float | None, lce: float | None) -> dict:
    records: dict = {
        "teacher": {"metrics": {"verify.pairs.acc": 0.95}},
        "export": {"metrics": {"export.cosine_min": 0.9999, "export.bconv_coverage": 1.0}},
    }
    if pytorch is not None:
        records["distill"] = {"metrics": {"verify.pairs.acc": pytorch}}
    if lce is not None:
        records["evaluate"] = {"metrics": {"verify.pairs.acc": lce}}
    return records


def test_acc_delta_is_lce_minus_pytorch_in_points() -> None:
    assert acc_delta_pt(_records(0.8500, 0.8475), "pairs") == pytest.approx(-0.25)
    assert acc_delta_pt(_records(0.8500, None), "pairs") is None
    assert acc_delta_pt(_records(None, 0.85), "pairs") is None
    assert acc_delta_pt(_records(0.85, 0.86), "other_set") is None


def test_summary_table_and_parent_metrics_carry_the_delta() -> None:
    records = _records(0.8500, 0.8525)
    table = summary_table(records, "pairs")
    line = next(r for r in table.splitlines() if r.startswith("acc LCE - PyTorch"))
    assert line.split()[-1] == "+0.25"
    config = load_config(ROOT / "pipelines/demo.yaml")
    _, metrics = run_summary(records, config, "pairs")
    assert metrics["export.acc_delta_pt"] == pytest.approx(0.25)
    assert metrics["pytorch.verify.pairs.acc"] == 0.85
    _, partial = run_summary(_records(0.85, None), config, "pairs")
    assert "export.acc_delta_pt" not in partial
    assert summary_table(_records(0.85, None), "pairs").splitlines()[-1].endswith("-")
