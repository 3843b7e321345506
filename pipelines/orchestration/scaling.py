"""One recipe at several budgets, as 1-bit student and float twin: the points of a scaling
curve (fitted and answered by :mod:`pipelines.evaluation.scaling`).

A recipe is a variant of an ablation file. Each budget runs it as its own pipeline
``<name>-<variant>-steps<N>`` in ``<output_dir>/scaling/<variant>-steps<N>`` with
``distill.train.max_steps: N`` (the learning-rate schedule follows the budget),
``distill.control: twin`` and only the stages that train (teacher, twin, distill): accuracy is
the PyTorch student's on the pipeline's evaluation sets, as the distill stage reports it. The
teacher, its cached targets and the decoded faces are the ablation's own (shared), so a
scaling run after ``facekd ablate`` pays for the students only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines.core.config import ConfigError
from pipelines.orchestration.ablation import Variant, expand_ablation, run_variants

EPOCHS_CAP = 10_000  # epochs never end a budget run: max_steps does


def budget_variants(
    path: str | os.PathLike, variant: str, budgets: list[int], overrides: list[str] | None = None
) -> list[Variant]:
    """The pipeline of ``variant`` at each budget (steps), validated."""
    if not budgets or any(b < 1 for b in budgets):
        raise ConfigError(f"--budgets: expected one or more step counts >= 1, got {budgets}")
    if len(set(budgets)) != len(budgets):
        raise ConfigError(f"--budgets: {budgets} repeats a budget")
    runs = []
    for steps in sorted(budgets):
        keys = [
            "stages=[teacher, distill]",
            "distill.control=twin",
            f"distill.train.max_steps={steps}",
            f"distill.train.epochs={EPOCHS_CAP}",
            "distill.train.max_minutes=null",
            *(overrides or []),
        ]
        (v,) = expand_ablation(path, keys, only=[variant])
        cfg = v.config
        cfg.pipeline.output_dir = str(
            cfg.output_dir().parent / "scaling" / f"{variant}-steps{steps}"
        )
        cfg.pipeline.name = f"{cfg.pipeline.name}-steps{steps}"
        cfg.pipeline.tags = {**cfg.pipeline.tags, "facekd.scaling.steps": str(steps)}
        runs.append(Variant(f"{variant}-steps{steps}", cfg, v.shares_teacher))
    return runs


def run_scaling(
    path: str | os.PathLike,
    variant: str,
    budgets: list[int],
    overrides: list[str] | None = None,
    log: Any = print,
) -> tuple[list[dict[str, Any]], float | None, str, Path]:
    """Train every budget (cached stages are reused); returns the points (steps, images
    seen, student and twin accuracy, minutes), the teacher's accuracy, the evaluation set
    and the folder of the budget runs (``<output_dir>/scaling``)."""
    runs = budget_variants(path, variant, budgets, overrides)
    base_out = Path(runs[0].config.output_dir()).parent.parent
    points = []
    teacher_acc = None
    eval_name = "?"
    for v, records, eval_name in run_variants(runs, base_out, log=log):
        d = records.get("distill", {}).get("metrics", {})
        key = f"verify.{eval_name}.acc"
        if key not in d:
            raise ConfigError(f"{v.config.pipeline.name}: the distill stage logged no {key}")
        t = records.get("teacher", {}).get("metrics", {})
        teacher_acc = t.get(key, teacher_acc)
        points.append(
            {
                "steps": int(d.get("train.steps", v.config.distill.train.max_steps or 0)),
                "images_seen": float(d["train.images_seen"]),
                "student_acc": float(d[key]),
                "twin_acc": d.get(f"twin.{key}"),
                "student_minutes": d.get("time.distill_s", 0.0) / 60,
                "mlflow_run_id": records.get("distill", {}).get("mlflow_parent_run_id"),
            }
        )
    return points, teacher_acc, eval_name, base_out / "scaling"
