"""The text table of ``facekd eval``: where the numbers come from, a row per set, the rest."""

from __future__ import annotations

from typing import Any


def format_value(key: str, value: float, metrics: dict[str, float]) -> str:
    """A metric for the table: accuracy with its fold spread, deltas signed, counts whole."""
    if key.endswith(".acc") and f"{key}_std" in metrics:
        return f"{value:.4f} +- {metrics[f'{key}_std']:.4f}"
    if key.endswith(".n_pairs"):
        return f"{value:.0f}"
    if key.endswith("_pt"):
        return f"{value:+.2f}"
    if key.endswith("_pt_max"):
        return f"{value:.2f}"
    return f"{value:.4f}"


def sets_table(report: dict[str, Any]) -> list[str]:
    """One row per set (and the mean): pairs, accuracy, AUC, TAR, deltas when measured."""
    m = report["metrics"]
    extra = [
        (col, suffix)
        for col, suffix in (
            ("acc@FAR thr", "acc_at_far"),
            ("ref acc", "acc_reference"),
            ("delta pt", "acc_delta_pt"),
            ("noise pt", "noise_delta_pt_max"),
        )
        if any(f"verify.{s['set']}.{suffix}" in m for s in report["sets"])
    ]
    header = ["set", "images", "pairs", "genuine", "10-fold acc", "AUC", "TAR@1e-3"]
    rows = [header + [c for c, _ in extra]]
    for s in [*report["sets"], {"set": "mean"}]:
        key = f"verify.{s['set']}"
        row = [
            s["set"],
            str(s.get("n_images", "")),
            str(s.get("n_pairs", "")),
            str(s.get("n_genuine", "")),
            format_value(f"{key}.acc", m[f"{key}.acc"], m),
            *(
                format_value(f"{key}.{k}", m[f"{key}.{k}"], m) if f"{key}.{k}" in m else ""
                for k in ("auc", "tar_far1e-3")
            ),
            *(
                format_value(f"{key}.{k}", m[f"{key}.{k}"], m) if f"{key}.{k}" in m else ""
                for _, k in extra
            ),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) + len(extra))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def format_table(report: dict[str, Any]) -> str:
    """The whole report of ``facekd eval`` as text (the JSON report's fields)."""
    m = report["metrics"]
    lines = [f"model  {report['model']}  [{report['model_format']}: {report['model_detail']}]"]
    if "reference" in report:
        ref = report["reference"]
        lines.append(f"ref    {ref['model']}  [{ref['model_format']}: {ref['model_detail']}]")
    for s in report["sets"]:
        lines.append(
            f"data   {s['data']}  [{s['set']}: {s['n_images']} images, {s['n_pairs']} pairs, "
            f"{s['n_genuine']} genuine" + (", folds from the file" if s["own_folds"] else "") + "]"
        )
    lines.append("")
    shown: set[str] = set()
    if len(report["sets"]) > 1:
        lines += sets_table(report)
        lines.append("")
        names = [f"verify.{s['set']}." for s in report["sets"]] + ["verify.mean."]
        shown = {k for k in m if k.startswith(tuple(names))}
    rest = [k for k in m if k not in shown]
    if rest:
        lines.append(f"{'metric':<36} value")
        lines += [
            f"{k:<36} {format_value(k, m[k], m)}"
            for k in rest
            if not k.endswith("_std") or k[:-4] not in m
        ]
    if "noise_deltas_pt" in report:
        draws = ", ".join(f"{d:+.2f}" for d in report["noise_deltas_pt"])
        lines.append(
            f"\n{report['noise_of']} at 1e-6 input noise: acc delta {draws} pt "
            "(the floor under any runtime's delta)"
        )
    lines.append(f"\n{report['seconds']:.1f} s")
    return "\n".join(lines)
