"""Comparison rows, the Pareto front and the figure, on hand-made runs (no tracking server)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.compare_rows import (
    CompareRow,
    format_table,
    mark_pareto,
    plot_pareto,
    row_from_run,
)
from pipelines.config import ConfigError


def _row(run_id: str, acc: float | None, fps: float | None) -> CompareRow:
    return CompareRow(
        run_id=run_id,
        pipeline="p",
        teacher="t",
        student="s",
        method="cosine",
        bits="W1A1",
        params=1e6,
        binary_macs=1e8,
        float_macs=1e7,
        size_bytes=5e5,
        latency_ms=None if fps is None else 1000 / fps,
        fps=fps,
        speedup=1.5,
        accuracy={} if acc is None else {"lfw": acc},
    )


def test_pareto_front_keeps_runs_no_other_beats_on_both() -> None:
    rows = [
        _row("fast", 0.80, 400),
        _row("accurate", 0.95, 100),
        _row("dominated", 0.79, 300),  # fast is better on both
        _row("tie_fps", 0.80, 400),  # equal to fast: neither dominates
        _row("no_acc", None, 1000),
    ]
    mark_pareto(rows, "verify.lfw.acc")
    front = {r.run_id for r in rows if r.pareto}
    assert front == {"fast", "accurate", "tie_fps"}
    table = format_table(rows, "verify.lfw.acc")
    assert table.splitlines()[1].startswith("*") and "0.8000" in table


def test_figure_is_written(tmp_path: Path) -> None:
    rows = [_row("a", 0.8, 400), _row("b", 0.9, 100)]
    mark_pareto(rows, "verify.lfw.acc")
    out = plot_pareto(rows, "verify.lfw.acc", tmp_path / "pareto.png")
    assert out.stat().st_size > 5_000


def _run(run_id: str, tags: dict, metrics: dict, params: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, run_name="x", start_time=0),
        data=SimpleNamespace(tags=tags, metrics=metrics, params=params or {}),
    )


def test_row_from_a_summary_or_rebuilt_from_stage_runs() -> None:
    summary = _run(
        "p1",
        {"facekd.summary": "1", "facekd.teacher": "mobilefacenet", "facekd.student": "s"},
        {"bench.fps": 300.0, "verify.lfw.acc": 0.9, "teacher.verify.lfw.acc": 0.99},
    )
    row = row_from_run(summary)
    assert row.teacher == "mobilefacenet" and row.accuracy == {"lfw": 0.9}
    assert row.teacher_accuracy == {"lfw": 0.99}
    # an older parent run without a summary: lineage and metrics from its stages
    old = _run("p2", {"facekd.pipeline": "old"}, {})
    children = [
        _run("c1", {"facekd.stage": "teacher"}, {"verify.lfw.acc": 0.97}, {"teacher.model": "m"}),
        _run(
            "c2",
            {"facekd.stage": "distill"},
            {"model.params": 2e6},
            {"distill.student": "birealface", "distill.losses.cosine": "1.0"},
        ),
        _run("c3", {"facekd.stage": "evaluate"}, {"bench.fps": 250.0, "verify.lfw.acc": 0.8}),
    ]
    row = row_from_run(old, children=children)
    assert (row.teacher, row.student, row.method) == ("m", "birealface", "cosine")
    assert row.params == 2e6 and row.fps == 250.0 and row.teacher_accuracy == {"lfw": 0.97}
    assert row_from_run(old, children=children[:2]) is None  # never evaluated: no row


def test_a_column_per_set_and_any_metric(tmp_path: Path) -> None:
    from pipelines.compare_rows import default_metric, metric_value

    sets = {"verify.lfw.acc": 0.9, "verify.cfp_fp.acc": 0.7, "verify.agedb_30.acc": 0.8}
    new = _row("new", None, 300)
    new.accuracy = {k.split(".")[1]: v for k, v in sets.items()}
    new.metrics = {**sets, "verify.mean.acc": 0.8, "verify.lfw.acc_at_far": 0.85}
    old = _row("old", 0.95, 100)  # one set, logged before verify.mean.acc existed
    old.metrics = {"verify.lfw.acc": 0.95}
    rows = [new, old]
    assert default_metric(rows) == "verify.mean.acc"
    assert (
        metric_value(old, "verify.mean.acc") == 0.95 and metric_value(new, "verify.mean.acc") == 0.8
    )
    assert metric_value(new, "verify.lfw.acc_at_far") == 0.85
    assert metric_value(old, "verify.cfp_fp.acc") is None
    with pytest.raises(ConfigError, match="--metric fps: expected verify.<set>.<metric>"):
        metric_value(new, "fps")
    mark_pareto(rows, "verify.mean.acc")
    assert new.pareto and old.pareto  # faster vs more accurate
    table = format_table(rows, "verify.lfw.acc_at_far")
    header = table.splitlines()[0].split()
    assert header.index("lfw") < header.index("mean") and "verify.lfw.acc_at_far" in header
    assert {"cfp_fp", "agedb_30"} <= set(header)
    new_line = next(line for line in table.splitlines() if line.split()[1] == "new")
    assert "0.7000" in new_line and "0.8500" in new_line
    mark_pareto(rows, "verify.cfp_fp.acc")  # the old run has no such set: off the plot
    assert new.pareto and not old.pareto
    assert plot_pareto(rows, "verify.cfp_fp.acc", tmp_path / "cfp.png").stat().st_size > 5_000


def test_reference_rows_of_the_teacher_tflites(tmp_path: Path) -> None:
    from pipelines.compare_rows import reference_rows

    metrics = {
        "bench.fps": 300.0,
        "verify.lfw.acc": 0.9,
        "teacher.model.params": 1e6,
        "reference.teacher_int8.verify.lfw.acc": 0.97,
        "reference.teacher_int8.verify.mean.acc": 0.97,
        "reference.teacher_int8.bench.fps": 150.0,
        "reference.teacher_int8.bench.latency_ms_p50": 6.7,
        "reference.teacher_int8.model.size_bytes": 1e6,
        "reference.teacher_float.verify.lfw.acc": 0.96,
        "reference.teacher_float.bench.fps": 50.0,
    }
    tags = {"facekd.summary": "1", "facekd.teacher": "mobilefacenet", "facekd.student": "s"}
    refs = reference_rows(_run("p1", tags, metrics))
    assert [(r.student, r.bits, r.kind) for r in refs] == [
        ("teacher_float", "fp32", "reference"),
        ("teacher_int8", "int8", "reference"),
    ]
    int8 = refs[1]
    assert int8.accuracy == {"lfw": 0.97} and int8.fps == 150.0 and int8.params == 1e6
    assert int8.mean_accuracy == 0.97 and int8.size_bytes == 1e6
    student = row_from_run(_run("p1", tags, metrics))
    rows = [student, *refs]
    mark_pareto(rows, "verify.mean.acc")
    assert [r.pareto for r in rows] == [True, False, True]  # float: slower and less accurate
    table = format_table(rows, "verify.mean.acc")
    assert sum(line.startswith(("R", "*R")) for line in table.splitlines()) == 2
    assert plot_pareto(rows, "verify.mean.acc", tmp_path / "p.png").stat().st_size > 5_000
