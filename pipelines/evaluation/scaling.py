"""Accuracy against training budget: a line in log(images seen) for the student and its twin,
and what the fits say about the budget a recipe needs.

Each curve is fitted by least squares as ``acc = a + b * log10(images seen)``. From the fits:
the images at which the student's line reaches the twin's best measured accuracy, the images
at which it reaches a target (e.g. the teacher minus 10 points), and where the student's and
the twin's lines meet. An answer is given only where the fit supports it: at least three
budgets, a rising student line that explains most of the variance (R^2 >= ``MIN_R2``), and a
point no further than ``MAX_EXTRAPOLATION`` times the largest budget measured; otherwise the
answer says which of these fails. Accuracy saturates, so a log-linear fit over a short range
is optimistic beyond it: the answers are lower bounds of the budget, not predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_R2 = 0.8
MAX_EXTRAPOLATION = 100.0


@dataclass
class LogFit:
    """``acc = intercept + slope * log10(images)`` with its R^2 over ``n`` points."""

    intercept: float
    slope: float
    r2: float
    n: int

    def at(self, images: float) -> float:
        return self.intercept + self.slope * math.log10(images)

    def images_for(self, acc: float) -> float | None:
        if self.slope <= 0:
            return None
        return 10 ** ((acc - self.intercept) / self.slope)


def fit_log(images: list[float], acc: list[float]) -> LogFit:
    """Least squares of ``acc`` on ``log10(images)`` (at least two distinct budgets)."""
    if len(images) != len(acc) or len(images) < 2:
        raise ValueError(f"need two or more (images, accuracy) points, got {len(images)}")
    xs = [math.log10(i) for i in images]
    mx, my = sum(xs) / len(xs), sum(acc) / len(acc)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("every point has the same budget: no slope to fit")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, acc, strict=True)) / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in acc)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, acc, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    return LogFit(intercept, slope, r2, len(xs))


def _supported(fit: LogFit, images: float | None, largest: float) -> str | None:
    """Why the answer ``images`` is not supported by ``fit``; None when it is."""
    if fit.n < 3:
        return f"only {fit.n} budgets measured (3 or more needed)"
    if fit.slope <= 0:
        return f"the student's accuracy does not rise with the budget (slope {fit.slope:+.4f})"
    if fit.r2 < MIN_R2:
        return f"the log-linear fit explains too little (R^2 {fit.r2:.2f} < {MIN_R2})"
    if images is None:
        return "the lines never meet"
    if images > MAX_EXTRAPOLATION * largest:
        return (
            f"{images:,.0f} images is {images / largest:,.0f}x the largest budget measured "
            f"(more than {MAX_EXTRAPOLATION:.0f}x: too far to extrapolate)"
        )
    return None


def budget_answer(fit: LogFit, acc: float, largest: float, label: str) -> dict[str, Any]:
    """The images at which ``fit`` reaches ``acc``, or why the fit does not say."""
    images = fit.images_for(acc)
    why = _supported(fit, images, largest)
    if images is not None and images <= largest and why is None:
        text = f"{label} ({acc:.3f}): reached within the budgets measured (~{images:,.0f} images)"
    elif why is None:
        text = f"{label} ({acc:.3f}): ~{images:,.0f} images ({images / largest:.1f}x the largest)"
    else:
        text = f"{label} ({acc:.3f}): not supported by the fit: {why}"
    return {"target": acc, "images": images if why is None else None, "text": text}


def crossing(student: LogFit, twin: LogFit, largest: float) -> dict[str, Any]:
    """Where the student's and the twin's lines meet (the budget where binarization would
    cost nothing), or why they do not."""
    if student.slope <= twin.slope:
        return {
            "images": None,
            "text": (
                "student and twin lines do not meet: the student's slope "
                f"({student.slope:+.4f}/decade) is not above the twin's ({twin.slope:+.4f})"
            ),
        }
    log_images = (twin.intercept - student.intercept) / (student.slope - twin.slope)
    images = 10**log_images
    why = _supported(student, images, largest)
    if why is not None:
        return {"images": None, "text": f"student and twin lines meet: not supported: {why}"}
    return {"images": images, "text": f"student and twin lines meet at ~{images:,.0f} images"}


def scaling_report(
    points: list[dict[str, Any]], teacher_acc: float | None, margin: float = 0.10
) -> dict[str, Any]:
    """Fits and answers for ``points`` (each with ``images_seen``, ``student_acc``,
    ``twin_acc``), with the teacher's accuracy as the reference for ``margin``."""
    points = sorted(points, key=lambda p: p["images_seen"])
    images = [p["images_seen"] for p in points]
    largest = max(images)
    student = fit_log(images, [p["student_acc"] for p in points])
    report: dict[str, Any] = {"points": points, "teacher_acc": teacher_acc}
    report["student_fit"] = student.__dict__
    answers = []
    twin_accs = [p["twin_acc"] for p in points if p.get("twin_acc") is not None]
    if len(twin_accs) == len(points):
        twin = fit_log(images, twin_accs)
        report["twin_fit"] = twin.__dict__
        answers.append(budget_answer(student, max(twin_accs), largest, "student reaches the twin"))
        answers.append(crossing(student, twin, largest))
    if teacher_acc is not None:
        label = f"student within {100 * margin:.0f} points of the teacher"
        answers.append(budget_answer(student, teacher_acc - margin, largest, label))
    report["answers"] = answers
    return report


def scaling_table(report: dict[str, Any]) -> str:
    """The points and fits as Markdown, then the answers, one per line."""
    lines = [
        "| steps | images seen | 1-bit student acc | float twin acc | binarization cost (pt) |",
        "|---|---|---|---|---|",
    ]
    for p in report["points"]:
        twin = p.get("twin_acc")
        cost = "-" if twin is None else f"{100 * (twin - p['student_acc']):+.1f}"
        twin_text = "-" if twin is None else f"{twin:.4f}"
        lines.append(
            f"| {p['steps']} | {p['images_seen']:,.0f} | {p['student_acc']:.4f} | "
            f"{twin_text} | {cost} |"
        )
    lines.append("")
    for name in ("student_fit", "twin_fit"):
        if name in report:
            f = report[name]
            lines.append(
                f"- {name.replace('_fit', '')}: acc = {f['intercept']:.3f} + "
                f"{f['slope']:.4f} x log10(images), R^2 {f['r2']:.2f} over {f['n']} budgets"
            )
    if report.get("teacher_acc") is not None:
        lines.append(f"- teacher: {report['teacher_acc']:.4f}")
    lines += [f"- {a['text']}" for a in report["answers"]]
    return "\n".join(lines)


def plot_scaling(report: dict[str, Any], path: Path, title: str) -> Path:
    """Accuracy against images seen (log axis): points, fitted lines, the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["points"]
    xs = [p["images_seen"] for p in points]
    lo, hi = min(xs) / 1.5, max(xs) * 10
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, name, colour in (("student", "1-bit student", "C0"), ("twin", "float twin", "C1")):
        ys = [p.get(f"{key}_acc") for p in points]
        if any(y is None for y in ys):
            continue
        ax.plot(xs, ys, "o", color=colour, label=name)
        f = report.get(f"{key}_fit")
        if f:
            line = LogFit(**f)
            ax.plot([lo, hi], [line.at(lo), line.at(hi)], "--", color=colour, lw=1)
    if report.get("teacher_acc") is not None:
        ax.axhline(report["teacher_acc"], color="k", lw=1, label="teacher")
        ax.axhline(report["teacher_acc"] - 0.10, color="k", lw=1, ls=":", label="teacher - 10 pt")
    ax.set_xscale("log")
    ax.set_xlabel("images seen")
    ax.set_ylabel("verification accuracy (held-out people)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
