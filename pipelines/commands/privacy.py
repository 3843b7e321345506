"""``facekd privacy``: how much of a face leaks from a teacher, a 1-bit student and its float
twin (template inversion and gradient leakage under one budget), outside a pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _settings(args: argparse.Namespace) -> Any:
    """The ``privacy`` section from the flags and ``--set`` overrides (keys of that section)."""
    from pydantic import ValidationError

    from pipelines.core.config import (
        ConfigError,
        PrivacyConfig,
        _format_errors,
        apply_override,
        check_privacy,
    )

    raw: dict[str, Any] = {"attacker": args.attacker or [], "targets": args.targets}
    if args.judge:
        raw["judge"] = args.judge
        raw["judge_model"] = args.judge_model
    for assignment in args.set:
        apply_override(raw, assignment)
    try:
        cfg = PrivacyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors("facekd privacy --set", err)) from None
    check_privacy(cfg, "facekd privacy")
    return cfg


def _models(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The teacher and student artifacts: the flags, else those of the run folder."""
    from pipelines.core.config import ConfigError

    run = Path(args.run) if args.run else None
    if run is not None and not run.is_dir():
        raise ConfigError(f"run folder {run} does not exist")
    teacher = (
        Path(args.teacher) if args.teacher else (run / "teacher" / "teacher.pt" if run else None)
    )
    student = (
        Path(args.student) if args.student else (run / "distill" / "student.pt" if run else None)
    )
    for what, path in (("teacher", teacher), ("student", student)):
        if path is not None and not path.is_file():
            raise ConfigError(f"--{what}: {path} does not exist (a facekd model artifact .pt)")
    if teacher is None and student is None:
        raise ConfigError("give a run folder, --teacher or --student")
    return teacher, student


def _cmd_privacy(args: argparse.Namespace) -> int:
    from pipelines.core.config import ConfigError
    from pipelines.orchestration.privacy_inputs import (
        attacker_faces,
        budget_of,
        load_judge,
        models_of,
        no_faces,
        target_set,
    )
    from privacy.analysis import analyse, format_table

    cfg = _settings(args)
    inverting = "inversion" in cfg.attacks
    if not cfg.targets or (inverting and not cfg.attacker):
        raise ConfigError("--targets and (for template inversion) --attacker are required")
    teacher_path, student_path = _models(args)
    if student_path is not None and teacher_path is None and cfg.gradient.iterations:
        print("note: no teacher: gradient leakage (which needs the teacher's targets) is skipped")
    models = models_of(teacher_path, student_path)
    targets = target_set(cfg.targets)
    judge, about = load_judge(cfg, models.get("teacher"), targets, teacher_path)
    print(f"judge: {about}")
    out = Path(args.out or (Path(args.run) / "privacy_report" if args.run else "privacy_report"))
    report = analyse(
        models,
        judge,
        attacker_faces(cfg.attacker, cfg.attacker_images) if inverting else no_faces(),
        targets,
        budget_of(cfg, args.seed),
        out,
    )
    print()
    print(
        "PSNR dB / SSIM / judge acceptance at FAR "
        f"{cfg.far:g} (lower = less leakage); acc = verification accuracy of the templates"
    )
    print(format_table(report.metrics))
    print()
    for name, path in report.grids.items():
        print(f"{name} grid: {path}")
    print(f"report: {out / 'privacy.json'} ({report.seconds / 60:.1f} min)")
    if args.json:
        Path(args.json).write_text(json.dumps(report.metrics, indent=2, sort_keys=True))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "privacy",
        help="attack a teacher, a 1-bit student and its float twin (template inversion, "
        "gradient leakage) and report what leaks",
        description=__doc__,
    )
    p.add_argument("run", nargs="?", help="a pipeline's output folder (teacher/, distill/)")
    p.add_argument("--teacher", help="a teacher artifact (teacher.pt); default: the run's")
    p.add_argument("--student", help="a student artifact (student.pt); default: the run's")
    p.add_argument(
        "--attacker",
        action="append",
        metavar="DIR",
        help="faces of people other than the attacked ones (any depth; repeatable)",
    )
    p.add_argument("--targets", metavar="DIR", help="ImageFolder of the attacked people")
    p.add_argument(
        "--judge",
        help="judge: dlib (independent; facekd[judge]), a facekd .pt or a checkpoint "
        "(default: the teacher)",
    )
    p.add_argument("--judge-model", default="mobilefacenet", help="model of a judge checkpoint")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a privacy setting (as under privacy: in a pipeline), e.g. inversion.steps=300",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for privacy.json and the grids")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=_cmd_privacy)
