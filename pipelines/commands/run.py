"""``facekd run PIPELINE``: run a pipeline YAML's stages (teacher, distill, export, evaluate)."""

from __future__ import annotations

import argparse
from typing import Any


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.core import logs
    from pipelines.core.config import load_config
    from pipelines.orchestration.orchestrator import Orchestrator
    from pipelines.orchestration.summary import summary_table
    from pipelines.tracking.runs import tracking_uri

    config = load_config(args.pipeline, args.set)
    logs.to_folder(config.output_dir())
    orch = Orchestrator(config)
    records = orch.run(only=args.only, start=getattr(args, "from"), force=args.force)
    print()
    print(summary_table(records, orch.data.eval_names))
    print()
    if "privacy" in records:
        from privacy.analysis import format_table

        print("Privacy: PSNR dB / SSIM / judge acceptance (lower = less leakage)")
        print(format_table(records["privacy"]["metrics"], prefix="privacy."))
        print()
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        print(f"Browse the runs: mlflow ui --backend-store-uri {uri}")
    else:
        print(f"Runs are on the tracking server {uri}")
    return 0


def add_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="run a pipeline YAML (stages: teacher, distill, export, evaluate, privacy)"
    )
    run.add_argument("pipeline", help="pipeline YAML file, e.g. pipelines/demo.yaml")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a configuration value (repeatable), e.g. distill.train.epochs=3",
    )
    run.add_argument("--only", metavar="STAGE", help="run just this stage")
    run.add_argument("--from", metavar="STAGE", help="run this stage and the ones after it")
    run.add_argument("--force", action="store_true", help="re-run stages even if up to date")
    run.set_defaults(func=_cmd_run)
