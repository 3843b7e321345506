"""The rows of ``facekd compare``: one per pipeline run, the accuracy-vs-FPS Pareto front,
pareto.png."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.config import ConfigError


@dataclass
class CompareRow:
    """What one pipeline run produced: lineage, cost and accuracy of its exported student."""

    run_id: str
    pipeline: str
    teacher: str
    student: str
    method: str
    bits: str
    params: float | None
    binary_macs: float | None
    float_macs: float | None
    size_bytes: float | None
    latency_ms: float | None
    fps: float | None
    speedup: float | None
    accuracy: dict[str, float] = field(default_factory=dict)
    teacher_accuracy: dict[str, float] = field(default_factory=dict)
    pareto: bool = False
    experiment: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # every verify.* of the student
    kind: str = "student"  # or "reference": a model one would deploy instead
    privacy: dict[str, float] = field(default_factory=dict)  # privacy.* of the privacy stage

    @property
    def mean_accuracy(self) -> float | None:
        """``verify.mean.acc``, or the mean over the row's sets for runs logged before it."""
        if "verify.mean.acc" in self.metrics:
            return self.metrics["verify.mean.acc"]
        return sum(self.accuracy.values()) / len(self.accuracy) if self.accuracy else None


def _accuracies(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """``{set: acc}`` of the ``<prefix>verify.<set>.acc`` keys (the mean is not a set)."""
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix + "verify.") and key.endswith(".acc"):
            name = key[len(prefix) + len("verify.") : -len(".acc")]
            if name != "mean":
                out[name] = value
    return out


def summary_from_children(children: list[Any]) -> tuple[dict[str, str], dict[str, float]]:
    """The parent-run summary rebuilt from its stage runs (runs logged before summaries)."""
    by_stage = {c.data.tags.get("facekd.stage"): c for c in children}
    if "evaluate" not in by_stage:
        return {}, {}
    tags = {"facekd.summary": "1", "facekd.bits": "W1A1"}
    metrics: dict[str, float] = {}
    if "teacher" in by_stage:
        t = by_stage["teacher"]
        tags["facekd.teacher"] = t.data.params.get("teacher.model", "?")
        metrics.update({f"teacher.{k}": v for k, v in t.data.metrics.items()})
    if "distill" in by_stage:
        d = by_stage["distill"]
        tags["facekd.student"] = d.data.params.get("distill.student", "?")
        losses = sorted({k.split(".")[2] for k in d.data.params if k.startswith("distill.losses.")})
        tags["facekd.distill.method"] = "+".join(losses) or "?"
        if "model.params" in d.data.metrics:
            metrics["model.params"] = d.data.metrics["model.params"]
    for stage in ("export", "evaluate", "privacy"):
        if stage in by_stage:
            metrics.update(
                {
                    k: v
                    for k, v in by_stage[stage].data.metrics.items()
                    if k.startswith(("verify.", "bench.", "model.", "export.", "privacy."))
                }
            )
    return tags, metrics


def _privacy_of_children(children: list[Any] | None) -> dict[str, float]:
    """``privacy.*`` metrics of the run's ``privacy`` stage run, if it has one."""
    for child in children or []:
        if child.data.tags.get("facekd.stage") == "privacy":
            return {k: v for k, v in child.data.metrics.items() if k.startswith("privacy.")}
    return {}


def _summary(run: Any, children: list[Any] | None) -> tuple[dict[str, str], dict[str, float]]:
    """Tags and metrics of a pipeline run, rebuilt from its stages when it has no summary;
    ``privacy.*`` from its privacy stage when the summary does not carry them."""
    tags, m = run.data.tags, run.data.metrics
    if tags.get("facekd.summary") != "1" and children:
        extra_tags, extra_metrics = summary_from_children(children)
        tags, m = {**tags, **extra_tags}, {**m, **extra_metrics}
    elif not any(k.startswith("privacy.") for k in m):
        m = {**_privacy_of_children(children), **m}
    return tags, m


REFERENCE_BITS = {"teacher_float": "fp32", "teacher_int8": "int8"}


def reference_rows(
    run: Any, experiment: str = "", children: list[Any] | None = None
) -> list[CompareRow]:
    """Rows of the models one would deploy instead (the teacher as float and int8 TFLite)
    that a run's evaluate stage measured (``reference.<name>.*``)."""
    tags, m = _summary(run, children)
    rows = []
    for name, bits in REFERENCE_BITS.items():
        prefix = f"reference.{name}."
        own = {k[len(prefix) :]: v for k, v in m.items() if k.startswith(prefix)}
        if "bench.fps" not in own:
            continue
        rows.append(
            CompareRow(
                run_id=run.info.run_id,
                pipeline=tags.get("facekd.pipeline", run.info.run_name or ""),
                teacher=tags.get("facekd.teacher", "?"),
                student=name,
                method="reference",
                bits=bits,
                params=m.get("teacher.model.params"),
                binary_macs=None,
                float_macs=None,
                size_bytes=own.get("model.size_bytes"),
                latency_ms=own.get("bench.latency_ms_p50"),
                fps=own["bench.fps"],
                speedup=None,
                accuracy=_accuracies(own),
                experiment=experiment,
                metrics={k: v for k, v in own.items() if k.startswith("verify.")},
                kind="reference",
            )
        )
    return rows


def row_from_run(
    run: Any, experiment: str = "", children: list[Any] | None = None
) -> CompareRow | None:
    """A comparison row from a pipeline's parent run (``facekd.summary`` tag) or, for runs
    logged before parent summaries existed, from its ``children`` stage runs; else None."""
    tags, m = _summary(run, children)
    if tags.get("facekd.summary") != "1" or "bench.fps" not in m:
        return None
    return CompareRow(
        run_id=run.info.run_id,
        pipeline=tags.get("facekd.pipeline", run.info.run_name or ""),
        teacher=tags.get("facekd.teacher", "?"),
        student=tags.get("facekd.student", "?"),
        method=tags.get("facekd.distill.method", "?"),
        bits=tags.get("facekd.bits", "?"),
        params=m.get("model.params"),
        binary_macs=m.get("model.binary_macs"),
        float_macs=m.get("model.float_macs"),
        size_bytes=m.get("model.size_bytes"),
        latency_ms=m.get("bench.latency_ms_p50"),
        fps=m.get("bench.fps"),
        speedup=m.get("bench.speedup_vs_float"),
        accuracy=_accuracies(m),
        teacher_accuracy=_accuracies(m, "teacher."),
        experiment=experiment,
        metrics={k: v for k, v in m.items() if k.startswith("verify.")},
        privacy={k: v for k, v in m.items() if k.startswith("privacy.")},
    )


def row_json(row: CompareRow, privacy: bool = False) -> dict[str, Any]:
    """A row as JSON, with its mean accuracy; its ``privacy.*`` metrics only when asked."""
    out = {**asdict(row), "mean_accuracy": row.mean_accuracy}
    if privacy:
        out["privacy"] = dict(sorted(row.privacy.items()))
        out["privacy_columns"] = {name: row.privacy.get(key) for name, key, _ in PRIVACY_COLUMNS}
    else:
        del out["privacy"]
    return out


def study_experiments(study: str) -> list[str]:
    """The MLflow experiments that hold trials of the sweep study ``study``."""
    from pipelines.tracking.runs import TrackingError, open_store, tracking_uri

    try:
        mlflow = open_store()
        runs = mlflow.search_runs(
            search_all_experiments=True,
            filter_string=f"tags.`facekd.sweep.study` = '{study}'",
            output_format="list",
        )
        ids = {r.info.experiment_id for r in runs}
        return sorted(mlflow.get_experiment(i).name for i in ids)
    except Exception as exc:  # noqa: BLE001 - any backend failure
        raise TrackingError(f"MLflow tracking at {tracking_uri()} is not usable: {exc}") from exc


def collect_rows(experiments: list[str], study: str | None = None) -> list[CompareRow]:
    """Rows of every finished pipeline run in the named experiments of the tracking store."""
    from pipelines.tracking.runs import TrackingError, open_store, tracking_uri

    try:
        mlflow = open_store()
    except Exception as exc:  # noqa: BLE001 - any backend failure
        raise TrackingError(f"MLflow tracking at {tracking_uri()} is not usable: {exc}") from exc
    rows: list[CompareRow] = []
    references: dict[tuple[Any, ...], CompareRow] = {}  # the latest measurement of each
    stage_runs: dict[str, Any] = {}  # run id -> stage run, of every experiment
    for name in experiments:
        try:
            exp = mlflow.get_experiment_by_name(name)
        except Exception as exc:  # noqa: BLE001 - any backend failure
            raise TrackingError(
                f"MLflow tracking at {tracking_uri()} is not usable: {exc}"
            ) from exc
        if exp is None:
            raise ConfigError(f"no MLflow experiment named {name!r} at {tracking_uri()}")
        runs = mlflow.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            output_format="list",
        )
        children: dict[str, list[Any]] = {}
        for run in runs:
            if "facekd.stage" in run.data.tags:
                children.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
                stage_runs[run.info.run_id] = run
        parents = sorted(
            (r for r in runs if not {"facekd.stage", "facekd.kind"} & set(r.data.tags)),
            key=lambda r: r.info.start_time,
        )
        latest: dict[tuple[str, str], Any] = {}  # (output dir, stage) -> latest stage run
        for run in parents:
            if study is not None and run.data.tags.get("facekd.sweep.study") != study:
                continue  # --study: the trials of one sweep only
            own = children.get(run.info.run_id, [])
            where = run.data.tags.get("facekd.output_dir", "")
            stages = {c.data.tags["facekd.stage"]: c for c in own}
            # stages reused from an earlier invocation on the same output folder
            for stage in ("teacher", "distill", "export"):
                if stage not in stages and (where, stage) in latest:
                    own = [*own, latest[(where, stage)]]
            # a privacy stage reused from an earlier invocation: the one the summary names
            reused = stage_runs.get(run.data.tags.get("facekd.run.privacy", ""))
            if "privacy" not in stages and reused is not None:
                own = [*own, reused]
            for c in children.get(run.info.run_id, []):
                latest[(where, c.data.tags["facekd.stage"])] = c
            row = row_from_run(run, name, own)
            if row is not None:
                rows.append(row)
                references.update({_reference_key(r): r for r in reference_rows(run, name, own)})
    return rows + list(references.values())


def _reference_key(row: CompareRow) -> tuple[Any, ...]:
    """One reference row per teacher, precision and accuracies (pipelines share teachers)."""
    return (row.teacher, row.bits, tuple(sorted((k, round(v, 6)) for k, v in row.accuracy.items())))


DEFAULT_METRIC = "verify.mean.acc"

# leakage of the privacy stage: lower is better (less of the face recovered / accepted)
PRIVACY_LEAKAGE = ("psnr", "ssim", "accept")
# ``facekd compare --privacy``: (column, metric, format)
PRIVACY_COLUMNS = (
    ("inv accept", "privacy.student.inversion.accept", ".3f"),
    ("inv SSIM", "privacy.student.inversion.ssim", ".3f"),
    ("twin grad PSNR", "privacy.twin.gradient_b1.psnr", ".1f"),
    ("1-bit grad PSNR", "privacy.student.gradient_b1.psnr", ".1f"),
)


def lower_is_better(metric: str) -> bool:
    """Whether ``metric`` is a privacy leakage metric (``privacy.<model>.<attack>.psnr``,
    ``.ssim``, ``.accept``): the best run leaks least."""
    return metric.startswith("privacy.") and metric.rsplit(".", 1)[-1] in PRIVACY_LEAKAGE


def _check_privacy_metric(metric: str) -> None:
    parts = metric.split(".")
    ok = len(parts) == 4 and (
        (parts[2] == "templates" and parts[3] in ("acc", "sign_acc"))
        or (parts[2] != "templates" and parts[3] in PRIVACY_LEAKAGE)
    )
    if not ok:
        raise ConfigError(
            f"--metric {metric}: expected privacy.<model>.<attack>.<psnr|ssim|accept> (lower is "
            "better) or privacy.<model>.templates.<acc|sign_acc>, e.g. "
            "privacy.student.inversion.accept"
        )


def metric_value(row: CompareRow, metric: str) -> float | None:
    """The row's ``verify.mean.acc`` (its sets' mean for older runs), ``verify.<set>.acc`` or
    any other ``verify.<set>.<metric>`` it logged (``auc``, ``acc_at_far``, ...), or a
    ``privacy.<model>.<attack>.<metric>`` of its privacy stage; else None."""
    if metric.startswith("privacy."):
        _check_privacy_metric(metric)
        return row.privacy.get(metric)
    if not metric.startswith("verify.") or metric.count(".") < 2:
        raise ConfigError(
            f"--metric {metric}: expected verify.<set>.<metric>, e.g. {DEFAULT_METRIC}, "
            "verify.lfw.acc or verify.lfw.acc_at_far, or privacy.<model>.<attack>.<metric>"
        )
    if metric == DEFAULT_METRIC:
        return row.mean_accuracy
    if metric.endswith(".acc"):
        return row.accuracy.get(metric[len("verify.") : -len(".acc")])
    return row.metrics.get(metric)


def _score(row: CompareRow, metric: str) -> float | None:
    """``metric`` oriented so that higher is better (leakage metrics negated)."""
    value = metric_value(row, metric)
    return None if value is None else -value if lower_is_better(metric) else value


def sort_key(row: CompareRow, metric: str) -> tuple[float, float]:
    """Best first by ``metric`` (lowest first for leakage metrics), then fastest; rows
    without the metric last."""
    score = _score(row, metric)
    return (math.inf if score is None else -score, -(row.fps or 0.0))


def mark_pareto(rows: list[CompareRow], metric: str) -> None:
    """Flag rows that no other row beats on both ``metric`` (accuracy; least leakage for
    privacy leakage metrics) and FPS."""
    scored = [(r, _score(r, metric), r.fps) for r in rows]
    for row, acc, fps in scored:
        if acc is None or fps is None:
            row.pareto = False
            continue
        row.pareto = not any(
            a is not None and f is not None and a >= acc and f >= fps and (a > acc or f > fps)
            for other, a, f in scored
            if other is not row
        )


def set_columns(rows: list[CompareRow]) -> list[str]:
    """The evaluation sets of the rows, those most rows share first."""
    counts: dict[str, int] = {}
    for row in rows:
        for name in row.accuracy:
            counts[name] = counts.get(name, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))


def default_metric(rows: list[CompareRow]) -> str:
    """``verify.mean.acc``: the mean over each run's sets (a one-set run: that set's)."""
    if not set_columns(rows):
        raise ConfigError("no run has a verify.<set>.acc metric to compare")
    return DEFAULT_METRIC


def _num(value: float | None, scale: float = 1.0, spec: str = ".2f") -> str:
    return "-" if value is None or math.isnan(value) else format(value / scale, spec)


def format_table(rows: list[CompareRow], metric: str, privacy: bool = False) -> str:
    """A fixed-width table, best first; ``*`` marks the Pareto front. A column per evaluation
    set, their mean, and ``metric`` when it is neither; with ``privacy`` the columns of
    ``PRIVACY_COLUMNS`` last (``-`` for runs without a privacy stage)."""
    sets = set_columns(rows)
    accuracy_columns = [f"verify.{name}.acc" for name in sets] + [DEFAULT_METRIC]
    shown = accuracy_columns + ([key for _, key, _ in PRIVACY_COLUMNS] if privacy else [])
    extra = [] if metric in shown else [metric]
    privacy_columns = PRIVACY_COLUMNS if privacy else ()
    header = (
        "P",
        "run",
        "pipeline",
        "teacher",
        "student",
        "method",
        "bits",
        "params M",
        "1-bit MACs M",
        "32-bit MACs M",
        "size MB",
        *sets,
        "mean acc",
        *extra,
        "latency ms",
        "FPS",
        "speedup",
        *(name for name, _, _ in privacy_columns),
    )
    lines = [header]
    for r in rows:
        lines.append(
            (
                ("*" if r.pareto else "") + ("R" if r.kind == "reference" else ""),
                r.run_id[:8],
                r.pipeline,
                r.teacher,
                r.student,
                r.method,
                r.bits,
                _num(r.params, 1e6),
                _num(r.binary_macs, 1e6, ".1f"),
                _num(r.float_macs, 1e6, ".1f"),
                _num(r.size_bytes, 1e6),
                *(_num(metric_value(r, key), 1.0, ".4f") for key in accuracy_columns + extra),
                _num(r.latency_ms),
                _num(r.fps, 1.0, ".0f"),
                _num(r.speedup, 1.0, ".2f") + ("x" if r.speedup else ""),
                *(_num(r.privacy.get(key), 1.0, spec) for _, key, spec in privacy_columns),
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def plot_pareto(rows: list[CompareRow], metric: str, path: Path) -> Path:
    """Accuracy against FPS, one labelled point per run, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r, metric_value(r, metric), r.fps) for r in rows]
    points = [(r, a, f) for r, a, f in points if a is not None and f is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    off = [(r, a, f) for r, a, f in points if not r.pareto]
    front = sorted([(r, a, f) for r, a, f in points if r.pareto], key=lambda p: p[2])
    if off:
        ax.scatter([f for _, _, f in off], [a for _, a, _ in off], c="tab:gray", label="run")
    if front:
        ax.plot(
            [f for _, _, f in front],
            [a for _, a, _ in front],
            "o-",
            c="tab:red",
            label="Pareto front",
        )
    refs = [(r, a, f) for r, a, f in points if r.kind == "reference"]
    if refs:  # what one would deploy instead: the teacher as float / int8 TFLite
        ax.scatter(
            [f for _, _, f in refs],
            [a for _, a, _ in refs],
            marker="s",
            s=70,
            facecolors="none",
            edgecolors="tab:blue",
            label="reference (teacher TFLite)",
            zorder=3,
        )
    offsets = [(8, 8), (8, -22), (-90, 8), (-90, -22)]  # staggered: close points stay legible
    for i, (r, a, f) in enumerate(sorted(points, key=lambda p: (p[2], p[1]))):
        ax.annotate(
            f"{r.teacher} {r.bits} TFLite"
            if r.kind == "reference"
            else f"{r.student} ({r.method})\n{r.run_id[:8]}",
            (f, a),
            textcoords="offset points",
            xytext=offsets[i % len(offsets)],
            fontsize=8,
            arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6},
        )
    ax.set_xlabel("FPS (batch 1: students in the LCE interpreter, references on XNNPACK)")
    if metric.startswith("privacy."):
        lower = " (lower = less leakage)" if lower_is_better(metric) else ""
        ax.set_ylabel(metric + lower)
        ax.set_title(f"{metric} vs speed of exported students")
    else:
        ax.set_ylabel(f"{metric} (10-fold)")
        ax.set_title("Accuracy vs speed of exported students and reference models")
    ax.grid(alpha=0.3)
    if points:
        ax.legend(loc="lower left")
        xs = [f for _, _, f in points]
        ax.set_xlim(min(xs) * 0.9, max(xs) * 1.25)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def compare(
    experiments: list[str],
    metric: str | None,
    output: Path,
    log_to_mlflow: bool = True,
    privacy: bool = False,
    study: str | None = None,
) -> tuple[list[CompareRow], str]:
    """Rows sorted by ``metric`` (best first; least leakage first for privacy leakage
    metrics), Pareto front marked, ``pareto.png`` written; ``privacy``: with the privacy
    columns and metrics.

    The table (JSON and text) and the figure are logged to a ``compare`` run of the first
    experiment (tag ``facekd.kind=comparison``; never itself a row).
    """
    rows = collect_rows(experiments, study)
    if not rows:
        of = f" of sweep study {study!r}" if study else ""
        raise ConfigError(
            f"no finished pipeline run{of} with an evaluation in experiment(s) "
            f"{', '.join(experiments) or '(none holds its trials)'}"
        )
    metric = metric or default_metric(rows)
    mark_pareto(rows, metric)
    rows.sort(key=lambda r: sort_key(r, metric))
    plot_pareto(rows, metric, output)
    if log_to_mlflow:
        import mlflow

        mlflow.set_experiment(experiments[0])
        with (
            contextlib.redirect_stdout(sys.stderr),  # MLflow prints run links; keep --json clean
            mlflow.start_run(run_name="compare", tags={"facekd.kind": "comparison"}),
            tempfile.TemporaryDirectory() as tmp,
        ):
            table = Path(tmp) / "comparison.txt"
            table.write_text(format_table(rows, metric, privacy) + "\n")
            data = Path(tmp) / "comparison.json"
            data.write_text(json.dumps([row_json(r, privacy) for r in rows], indent=2))
            for p in (table, data, output):
                mlflow.log_artifact(str(p))
            mlflow.log_param("metric", metric)
            mlflow.log_param("experiments", ",".join(experiments))
    return rows, metric
