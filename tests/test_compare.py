"""Comparison rows, the Pareto front and the figure, on hand-made runs (no tracking server)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.core.config import ConfigError
from pipelines.tracking.compare import (
    CompareRow,
    format_table,
    mark_pareto,
    plot_pareto,
    row_from_run,
)


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
    from pipelines.tracking.compare import default_metric, metric_value

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
    from pipelines.tracking.compare import reference_rows

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


PRIVACY = {
    "privacy.student.inversion.accept": 0.125,
    "privacy.student.inversion.ssim": 0.3125,
    "privacy.student.inversion.psnr": 13.5,
    "privacy.twin.gradient_b1.psnr": 21.25,
    "privacy.student.gradient_b1.psnr": 9.75,
    "privacy.teacher.inversion.accept": 0.5,
    "privacy.judge.threshold": 0.42,
}
# the table of two runs without privacy metrics as it was before the privacy columns existed
OLD_TABLE = (
    "P  run       pipeline  teacher  student  method  bits  params M  1-bit MACs M  "
    "32-bit MACs M  size MB  lfw     mean acc  latency ms  FPS  speedup\n"
    "*  aaaaaaaa  p         t        s        cosine  W1A1  1.00      100.0         10.0"
    "           0.50     0.9000  0.9000    5.00        200  1.50x\n"
    "*  bbbbbbbb  p         t        s        cosine  W1A1  1.00      100.0         10.0"
    "           0.50     0.8000  0.8000    2.50        400  1.50x"
)


def _cells(table: str, run_id: str) -> dict[str, str]:
    """``{column: cell}`` of a row of the table (columns split on two or more spaces)."""
    import re

    lines = table.splitlines()
    line = next(line for line in lines if run_id[:8] in line)
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", lines[0])]
    ends = [*starts[1:], None]
    return {lines[0][s:e].strip(): line[s:e].strip() for s, e in zip(starts, ends, strict=True)}


def test_runs_without_privacy_metrics_keep_the_old_table_and_json() -> None:
    from pipelines.tracking.compare import row_json

    rows = [_row("aaaaaaaa1", 0.9, 200), _row("bbbbbbbb2", 0.8, 400)]
    mark_pareto(rows, "verify.lfw.acc")
    assert format_table(rows, "verify.lfw.acc") == OLD_TABLE
    assert "privacy" not in row_json(rows[0]) and "privacy_columns" not in row_json(rows[0])
    with_privacy = format_table(rows, "verify.lfw.acc", privacy=True)
    assert with_privacy.splitlines()[0].endswith(
        "inv accept  inv SSIM  twin grad PSNR  1-bit grad PSNR"
    )
    assert set(list(_cells(with_privacy, "aaaaaaaa").values())[-4:]) == {"-"}
    assert row_json(rows[0], privacy=True)["privacy"] == {}


def test_privacy_metrics_from_the_privacy_stage_as_columns_and_json() -> None:
    from pipelines.tracking.compare import row_json

    tags = {"facekd.summary": "1", "facekd.teacher": "t", "facekd.student": "s"}
    summary = {"bench.fps": 300.0, "verify.lfw.acc": 0.9}
    stage = _run("c9", {"facekd.stage": "privacy"}, {**PRIVACY, "privacy.other": 1.0})
    # the parent's summary has no privacy.* metrics: they come from its privacy stage run
    with_privacy = row_from_run(_run("p1aaaaaaa", tags, summary), children=[stage])
    assert with_privacy.privacy == {**PRIVACY, "privacy.other": 1.0}
    # ... or from the summary itself, which wins
    direct = row_from_run(
        _run("p3", tags, {**summary, "privacy.student.inversion.accept": 0.25}), children=[stage]
    )
    assert direct.privacy == {"privacy.student.inversion.accept": 0.25}
    # an older parent without a summary: rebuilt from its stages, privacy included
    old_children = [
        _run("c1", {"facekd.stage": "evaluate"}, {"bench.fps": 250.0, "verify.lfw.acc": 0.8}),
        stage,
    ]
    old = row_from_run(_run("p4", {}, {}), children=old_children)
    assert old.privacy["privacy.student.gradient_b1.psnr"] == 9.75
    without = row_from_run(_run("p2bbbbbbb", tags, {**summary, "bench.fps": 500.0}))
    assert without.privacy == {}
    rows = [with_privacy, without]
    mark_pareto(rows, "verify.lfw.acc")
    table = format_table(rows, "verify.lfw.acc", privacy=True)
    cells = _cells(table, "p1aaaaaaa")
    assert (
        cells["inv accept"],
        cells["inv SSIM"],
        cells["twin grad PSNR"],
        cells["1-bit grad PSNR"],
    ) == ("0.125", "0.312", "21.2", "9.8")
    assert [_cells(table, "p2bbbbbbb")[c] for c in ("inv accept", "1-bit grad PSNR")] == ["-", "-"]
    assert "inv accept" not in format_table(rows, "verify.lfw.acc")
    data = row_json(with_privacy, privacy=True)
    assert data["privacy"]["privacy.teacher.inversion.accept"] == 0.5
    assert data["privacy_columns"] == {
        "inv accept": 0.125,
        "inv SSIM": 0.3125,
        "twin grad PSNR": 21.25,
        "1-bit grad PSNR": 9.75,
    }
    assert row_json(without, privacy=True)["privacy_columns"]["inv accept"] is None


def test_privacy_leakage_metric_sorts_and_fronts_lowest_first(tmp_path: Path) -> None:
    from pipelines.tracking.compare import lower_is_better, metric_value, sort_key

    metric = "privacy.student.inversion.accept"
    leaky, private, slow_private, unknown = (
        _row("leaky", 0.9, 400),
        _row("private", 0.8, 300),
        _row("slow_private", 0.8, 100),
        _row("unknown", 0.95, 1000),
    )
    leaky.privacy = {metric: 0.4}
    private.privacy = {metric: 0.1}
    slow_private.privacy = {metric: 0.2}  # leaks more and is slower than private
    rows = [leaky, slow_private, unknown, private]
    assert lower_is_better(metric) and not lower_is_better("privacy.student.templates.acc")
    assert metric_value(private, metric) == 0.1 and metric_value(unknown, metric) is None
    mark_pareto(rows, metric)
    assert {r.run_id for r in rows if r.pareto} == {"leaky", "private"}
    rows.sort(key=lambda r: sort_key(r, metric))
    assert [r.run_id for r in rows] == ["private", "slow_private", "leaky", "unknown"]
    columns = list(_cells(format_table(rows, metric), "private"))
    assert columns[-5:] == ["mean acc", metric, "latency ms", "FPS", "speedup"]
    assert _cells(format_table(rows, metric), "slow_private")[metric] == "0.2000"
    # already a privacy column: not twice
    assert format_table(rows, metric, privacy=True).count("inv accept") == 1
    for row, acc in ((leaky, 0.9), (private, 0.7)):
        row.privacy["privacy.student.templates.acc"] = acc
    rows.sort(key=lambda r: sort_key(r, "privacy.student.templates.acc"))  # higher is better
    assert [r.run_id for r in rows[:2]] == ["leaky", "private"]
    with pytest.raises(ConfigError, match="lower is better"):
        metric_value(leaky, "privacy.student.inversion.seconds")
    assert plot_pareto(rows, metric, tmp_path / "privacy.png").stat().st_size > 5_000


def test_compare_command_privacy_flag(monkeypatch, capsys) -> None:
    import json

    import pipelines.commands.compare as command
    from pipelines.cli import main

    row = _row("p1aaaaaaa", 0.9, 300)
    row.privacy = dict(PRIVACY)
    plain = _row("p2bbbbbbb", 0.8, 400)
    monkeypatch.setattr(
        command,
        "compare",
        lambda e, m, o, log, privacy=False, study=None: ([row, plain], m or "verify.mean.acc"),
    )
    out = "fig.png"  # never written: compare is replaced
    assert main(["compare", "--no-log", "--output", out]) == 0
    text = capsys.readouterr().out
    assert "inv accept" not in text and "privacy" not in text
    assert main(["compare", "--no-log", "--output", out, "--privacy"]) == 0
    text = capsys.readouterr().out
    assert _cells(text.split("\n\n")[0], "p1aaaaaaa")["inv accept"] == "0.125"
    assert "lower = less leakage" in text
    assert main(["compare", "--no-log", "--output", out, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "privacy" not in data["rows"][0] and "privacy_columns" not in data
    assert main(["compare", "--no-log", "--output", out, "--json", "--privacy"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["privacy_columns"]["inv accept"] == "privacy.student.inversion.accept"
    assert data["rows"][0]["privacy_columns"]["inv accept"] == 0.125
    assert data["rows"][1]["privacy"] == {}
    metric = "privacy.student.inversion.ssim"
    assert main(["compare", "--no-log", "--output", out, "--metric", metric]) == 0
    assert "(lowest first: less leakage)" in capsys.readouterr().out
