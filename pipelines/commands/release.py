"""``facekd release RUN_ID --name NAME``: register a student in the MLflow Model Registry and
write its release bundle (library: ``pipelines.tracking.release``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.tracking.release import release


def _cmd_release(args: argparse.Namespace) -> int:
    bundle = release(args.run_id, args.name, args.version, Path(args.output))
    print(f"released {args.name} version {bundle.name}: bundle {bundle}")
    print(f"load it: mlflow.pyfunc.load_model('models:/{args.name}/<registry version>')")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("release", help="register a run's student and write its release bundle")
    p.add_argument("run_id", help="pipeline run id (as listed by facekd compare) or a stage run")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--version", help="release version label (default: next registry version)")
    p.add_argument("--output", default="releases", help="folder for bundles (default: releases)")
    p.set_defaults(func=_cmd_release)
