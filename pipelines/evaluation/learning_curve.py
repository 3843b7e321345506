"""Learning curves: held-out accuracy against images seen, of a student and its float twin.

The training loop appends one JSON line per evaluation (``pipelines.training.fit``); here the
lines are read back (a resumed run may repeat a step: the last one counts), kept as the stage's
``learning_curve.json`` and drawn as a PNG, one line per model and evaluation set."""

from __future__ import annotations

import json
from pathlib import Path

Curve = list[dict[str, float]]


def read_curve(path: Path) -> Curve:
    """The evaluations of a JSON-lines curve file, one per step, in step order."""
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            by_step[int(entry["step"])] = entry
    return [by_step[s] for s in sorted(by_step)]


def accuracy_points(curve: Curve, set_name: str) -> list[tuple[float, float]]:
    """(images seen, ``verify.<set_name>.acc``) of every evaluation that has it."""
    key = f"verify.{set_name}.acc"
    return [(float(e["images_seen"]), float(e[key])) for e in curve if key in e]


def plot_curves(curves: dict[str, Curve], set_names: list[str], path: Path, title: str) -> Path:
    """One line per (model, set): accuracy against images seen; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", ":", "-."]
    for i, (label, curve) in enumerate(curves.items()):
        for j, name in enumerate(set_names):
            points = accuracy_points(curve, name)
            if points:
                xs, ys = zip(*points, strict=True)
                suffix = f" ({name})" if len(set_names) > 1 else ""
                ax.plot(
                    xs,
                    ys,
                    styles[j % len(styles)],
                    marker="o",
                    ms=3,
                    label=label + suffix,
                    color=f"C{i}",
                )
    ax.set_xlabel("images seen")
    ax.set_ylabel("10-fold verification accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
