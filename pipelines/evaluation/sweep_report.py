"""A sweep's results: the Pareto front as a table and a plot (every trial, the front, the
teacher's float and int8 TFLite as reference points)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"


def front_table(result: Any, objectives: dict[str, str]) -> str:
    """Markdown: the front's trials with objectives, sampled keys and MLflow run ids."""
    names = list(objectives)
    head = " | ".join(f"{m} ({'max' if d == 'maximize' else 'min'})" for m, d in objectives.items())
    lines = [f"| trial | {head} | keys | MLflow run |", "|---|" + "---|" * (len(names) + 2)]
    order = sorted(
        result.front, key=lambda r: r["values"][0], reverse=objectives[names[0]] == "maximize"
    )
    for row in order:
        values = " | ".join(_fmt(v) for v in row["values"])
        keys = ", ".join(f"{k}={json.dumps(v)}" for k, v in row["params"].items())
        lines.append(f"| {row['number']} | {values} | {keys} | {row['mlflow_run_id'] or '-'} |")
    return "\n".join(lines)


def summary_lines(result: Any) -> list[str]:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items()))
    lines = [f"study {result.study} ({result.storage}): {counts or 'no trials'}"]
    if result.counts.get("pruned"):
        lines.append(
            f"pruned trials ran {result.pruned_minutes:.1f} min; run to the end they would have "
            f"taken ~{result.saved_minutes:.1f} min more (the median complete trial's time)"
        )
    for row in result.trials:
        if row["state"] == "fail" and row.get("log"):
            lines.append(f"trial {row['number']} failed: see {row['log']}")
    return lines


def plot_front(
    result: Any,
    objectives: dict[str, str],
    path: Path,
    references: dict[str, tuple[float, float]] | None = None,
) -> Path | None:
    """The first two objectives of every finished trial, the front joined; None with one."""
    names = list(objectives)
    if len(names) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [r for r in result.trials if r["state"] == "complete" and r["values"]]
    ax.scatter(
        [r["values"][1] for r in done], [r["values"][0] for r in done],
        color="0.6", label="trials", zorder=2,
    )  # fmt: skip
    front = sorted(result.front, key=lambda r: r["values"][1])
    ax.plot(
        [r["values"][1] for r in front], [r["values"][0] for r in front],
        "o-", color="C0", label="Pareto front", zorder=3,
    )  # fmt: skip
    for r in front:
        ax.annotate(str(r["number"]), (r["values"][1], r["values"][0]), fontsize=7)
    for name, (y, x) in (references or {}).items():
        ax.scatter([x], [y], marker="*", s=120, zorder=4, label=name)
    ax.set_xlabel(names[1])
    ax.set_ylabel(names[0])
    ax.set_title(f"sweep {result.study}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def references_of(trials_records: list[dict[str, Any]], objectives: dict[str, str]) -> dict:
    """The teacher's TFLite reference points (``reference.<name>.<metric>``) of a trial's
    evaluate record, for the first two objectives, where it logged both."""
    names = list(objectives)[:2]
    out: dict[str, tuple[float, float]] = {}
    for metrics in trials_records:
        prefixes = {k.split(".")[1] for k in metrics if k.startswith("reference.")}
        for ref in sorted(prefixes):
            keys = [f"reference.{ref}.{m}" for m in names]
            if all(k in metrics for k in keys):
                out[ref] = (float(metrics[keys[0]]), float(metrics[keys[1]]))
        if out:
            break
    return out
