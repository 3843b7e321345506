"""The table printed at the end of a pipeline run: teacher vs exported student."""

from __future__ import annotations

import json
from typing import Any


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _names(eval_names: str | list[str]) -> list[str]:
    return [eval_names] if isinstance(eval_names, str) else list(eval_names)


def _headline(eval_names: str | list[str]) -> str:
    """The accuracy that sums a run up: the only set's, or ``mean`` over several."""
    names = _names(eval_names)
    return names[0] if len(names) == 1 else "mean"


def acc_delta_pt(records: dict[str, dict[str, Any]], eval_names: str | list[str]) -> float | None:
    """The exported LCE model's 10-fold accuracy minus PyTorch's on the same pairs, in points
    (the mean accuracy with several sets; None until the distill and evaluate stages ran)."""
    key = f"verify.{_headline(eval_names)}.acc"
    pytorch = records.get("distill", {}).get("metrics", {}).get(key)
    lce = records.get("evaluate", {}).get("metrics", {}).get(key)
    if pytorch is None or lce is None:
        return None
    return 100 * (float(lce) - float(pytorch))


def _set_rows(names: list[str], columns: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Accuracy rows, one per set (and the mean of several), then AUC / TAR / fixed-FAR."""

    def acc(m: dict[str, Any], key: str) -> str:
        if f"{key}.acc" not in m:
            return "-"
        return f"{m[f'{key}.acc']:.4f} +- {m.get(f'{key}.acc_std', 0):.4f}"

    def each(metric: str, spec: str) -> tuple[str, ...]:
        return tuple(_fmt(m.get(metric), spec) for m in columns)

    several = len(names) > 1
    rows = [(f"{n} 10-fold acc", *(acc(m, f"verify.{n}") for m in columns)) for n in names]
    if several:
        rows.append(("mean acc", *each("verify.mean.acc", ".4f")))
    for n in names:
        prefix = f"{n} " if several else ""
        rows.append((f"{prefix}ROC AUC", *each(f"verify.{n}.auc", ".4f")))
        rows.append((f"{prefix}TAR @ FAR=1e-3", *each(f"verify.{n}.tar_far1e-3", ".4f")))
    if any(f"verify.{names[0]}.acc_at_far" in m for m in columns):
        for n in names:
            rows.append((f"{n} acc @ fixed FAR thr", *each(f"verify.{n}.acc_at_far", ".4f")))
    return rows


def summary_table(records: dict[str, dict[str, Any]], eval_names: str | list[str]) -> str:
    """Teacher vs student rows from the stage records (works when stages were cached); a row
    per evaluation set."""
    names = _names(eval_names)
    t = records.get("teacher", {}).get("metrics", {})
    d = records.get("distill", {}).get("metrics", {})
    x = records.get("export", {}).get("metrics", {})
    e = records.get("evaluate", {}).get("metrics", {})
    refs = reference_metrics(e)
    blank = ("",) * len(refs)
    rows = [
        ("", "teacher", "student (PyTorch)", "student (LCE .tflite)", *refs),
        *_set_rows(names, [t, d, e, *refs.values()]),
        (
            "params",
            _fmt(t.get("model.params"), ",.0f"),
            _fmt(d.get("model.params"), ",.0f"),
            "",
            *blank,
        ),
        (
            "size",
            _size(t.get("model.size_bytes")) + " (fp32)",
            "",
            _size(x.get("model.size_bytes") or e.get("model.size_bytes")),
            *(_size(m.get("model.size_bytes")) for m in refs.values()),
        ),
        (
            "latency p50, 1 thread",
            _fmt(e.get("bench.teacher_latency_ms_p50"), ".2f") + " ms (ONNX Runtime)",
            "",
            _fmt(e.get("bench.latency_ms_p50"), ".2f") + " ms (LCE)",
            *(_fmt(m.get("bench.latency_ms_p50"), ".2f") + " ms (XNNPACK)" for m in refs.values()),
        ),
        (
            "float twin latency",
            "",
            "",
            _fmt(e.get("bench.float_latency_ms_p50"), ".2f") + " ms (TFLite)",
            *blank,
        ),
        ("speedup vs float", "", "", _fmt(e.get("bench.speedup_vs_float"), ".2f") + "x", *blank),
        ("LceBconv2d coverage", "", "", _fmt(x.get("export.bconv_coverage"), ".2f"), *blank),
        ("cosine min PyTorch/LCE", "", "", _fmt(x.get("export.cosine_min"), ".5f"), *blank),
        ("acc LCE - PyTorch (pt)", "", "", _fmt(acc_delta_pt(records, names), "+.2f"), *blank),
        *_twin_rows(records, names, len(refs)),
    ]
    return _render(rows)


def _twin_rows(
    records: dict[str, dict[str, Any]], names: list[str], n_refs: int
) -> list[tuple[str, ...]]:
    """With ``distill.control: twin``: the float twin's accuracy (same recipe, data, budget)
    under the student's PyTorch column, and the cost of binarization in points."""
    d = records.get("distill", {}).get("metrics", {})
    if "distill.binarization_cost" not in d:
        return []
    blank = ("",) * (n_refs + 1)
    rows = []
    for n in [*names, "mean"] if len(names) > 1 else names:
        acc = d.get(f"twin.verify.{n}.acc")
        label = f"float twin {n} acc" if len(names) > 1 else "float twin acc (same budget)"
        rows.append((label, "", _fmt(acc, ".4f"), *blank))
    cost = 100 * d["distill.binarization_cost"]
    rows.append(("binarization cost (pt)", "", _fmt(cost, "+.2f"), *blank))
    return rows


REFERENCE_COLUMNS = {
    "teacher_float": "teacher (TFLite fp32)",
    "teacher_int8": "teacher (TFLite int8)",
}


def reference_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{column title: metrics}`` of the reference models (``reference.<name>.<key>``) that
    the evaluate stage measured, their prefix removed."""
    out = {}
    for name, title in REFERENCE_COLUMNS.items():
        prefix = f"reference.{name}."
        found = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        if found:
            out[title] = found
    return out


def _render(rows: list[tuple[str, ...]]) -> str:
    """Fixed-width columns, a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_description() -> str:
    """Where benchmarks ran: CPU model, core count, OS (stored with each stage record)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def run_summary(
    records: dict[str, dict[str, Any]], config: Any, eval_names: str | list[str]
) -> tuple[dict[str, str], dict[str, float]]:
    """Tags and metrics that make a pipeline's parent run a complete row for comparison.

    Covers every stage of the pipeline, including stages reused from earlier invocations:
    what was trained from what (tags), the exported student's accuracy, speed, size and MACs,
    and the teacher's accuracy (prefixed ``teacher.``). Stage runs are referenced by id
    (``facekd.run.<stage>``) so that a release can fetch their artifacts.
    """
    from distill.losses import method_name

    losses = config.distill.losses
    tags = {
        "facekd.summary": "1",
        "facekd.teacher": config.teacher.model,
        "facekd.student": config.distill.student,
        "facekd.student_args": json.dumps(config.distill.args, sort_keys=True),
        "facekd.distill.method": method_name(losses, bool(config.distill.unlabelled)),
        "facekd.bits": "W1A1",
        "facekd.eval_set": ",".join(_names(eval_names)),
        "facekd.data.train": str(config.data.train),
    }
    tags.update(config.pipeline.tags)
    for stage, record in records.items():
        if record.get("mlflow_run_id"):
            tags[f"facekd.run.{stage}"] = record["mlflow_run_id"]
    if "machine" in records.get("evaluate", {}):
        tags["facekd.bench_machine"] = records["evaluate"]["machine"]
    metrics: dict[str, float] = {}
    for key, value in records.get("teacher", {}).get("metrics", {}).items():
        if key.startswith(("verify.", "model.")):
            metrics[f"teacher.{key}"] = value
    for key, value in records.get("distill", {}).get("metrics", {}).items():
        if key.startswith("verify."):
            metrics[f"pytorch.{key}"] = value
        elif key.startswith(("twin.verify.", "distill.binarization_cost")) or key == "model.params":
            metrics[key] = value
    for stage in ("export", "evaluate", "privacy"):
        for key, value in records.get(stage, {}).get("metrics", {}).items():
            if key.startswith(("verify.", "bench.", "model.", "export.", "reference.", "privacy.")):
                metrics[key] = value
    delta = acc_delta_pt(records, eval_names)
    if delta is not None:
        metrics["export.acc_delta_pt"] = delta
    return tags, {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
