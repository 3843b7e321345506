"""Scaling of one recipe: held-out accuracy of the 1-bit student and its float twin at 3-4
budgets, fitted against log(images seen), and the budget the fits say the student needs.

Each budget is the recipe's own pipeline with ``distill.train.max_steps`` set (stages teacher,
twin, distill only; :mod:`pipelines.orchestration.scaling`); the fits and their limits are
:mod:`pipelines.evaluation.scaling`'s. Prints the points, the fits and the answers; writes
them as JSON, Markdown and a PNG beside the runs (``<output_dir>/scaling/<variant>.*``).

    .venv/bin/python benchmarks/scaling.py pipelines/ablation_recipe.yaml --variant today \
        --budgets 90 357 1428 [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.core.config import ConfigError  # noqa: E402
from pipelines.evaluation.scaling import plot_scaling, scaling_report, scaling_table  # noqa: E402
from pipelines.orchestration.scaling import run_scaling  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("pipeline", type=Path, help="ablation file (pipeline with variants:)")
    ap.add_argument("--variant", default="today", help="the recipe: one of the file's variants")
    ap.add_argument("--budgets", type=int, nargs="+", default=[90, 357, 1428], help="steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    ap.add_argument("--margin", type=float, default=0.10, help="target: teacher minus this")
    args = ap.parse_args(argv)
    try:
        points, teacher_acc, eval_name, folder = run_scaling(
            args.pipeline, args.variant, args.budgets, args.set
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = scaling_report(points, teacher_acc, args.margin)
    report.update(variant=args.variant, eval_set=eval_name, pipeline=str(args.pipeline))
    table = scaling_table(report)
    print(f"\n{args.variant} on {eval_name} (PyTorch, 10-fold)\n{table}")
    (folder / f"{args.variant}.json").write_text(json.dumps(report, indent=1) + "\n")
    (folder / f"{args.variant}.md").write_text(table + "\n")
    title = f"{args.variant}: {eval_name}, accuracy against images seen"
    png = plot_scaling(report, folder / f"{args.variant}.png", title)
    print(f"wrote {folder / args.variant}.json, .md and {png.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
