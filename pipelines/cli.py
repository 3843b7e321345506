"""The ``facekd`` command line."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 3
EXIT_INTERRUPTED = 130
VERBOSE_HELP = (
    "also show other libraries' logs and warnings here (by default they go to the log file: "
    "<output_dir>/facekd.log for a run)"
)

from pipelines import logs  # noqa: E402
from pipelines.ablate_cmd import add_ablate_parser  # noqa: E402  (after the TF log setting)
from pipelines.align_cmd import add_align_parser  # noqa: E402
from pipelines.bench_cmd import add_bench_parser  # noqa: E402
from pipelines.compare_cmd import add_compare_parser  # noqa: E402
from pipelines.doctor_cmd import add_doctor_parser  # noqa: E402
from pipelines.environment import facekd_version  # noqa: E402
from pipelines.evaluate_cmd import add_eval_parser  # noqa: E402
from pipelines.profile_cmd import add_profile_parser  # noqa: E402


def _cmd_run(args: argparse.Namespace) -> int:
    from pipelines.config import load_config
    from pipelines.orchestrator import Orchestrator
    from pipelines.summary import summary_table
    from pipelines.tracking import tracking_uri

    config = load_config(args.pipeline, args.set)
    logs.to_folder(config.output_dir())
    orch = Orchestrator(config)
    records = orch.run(only=args.only, start=getattr(args, "from"), force=args.force)
    print()
    print(summary_table(records, orch.data.eval_names))
    print()
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        print(f"Browse the runs: mlflow ui --backend-store-uri {uri}")
    else:
        print(f"Runs are on the tracking server {uri}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facekd",
        description="Distil face recognition teachers into 1-bit students for Larq Compute Engine.",
    )
    parser.add_argument("--version", action="version", version=f"facekd {facekd_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run a pipeline YAML (stages: teacher, distill, export, evaluate)"
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
    add_ablate_parser(sub)
    add_eval_parser(sub)
    add_align_parser(sub)
    add_compare_parser(sub)
    add_profile_parser(sub)
    add_bench_parser(sub)
    from pipelines.release_cmd import add_release_parser

    add_release_parser(sub)
    add_doctor_parser(sub)
    from pipelines.pack_cmd import add_pack_parser
    from pipelines.sync_cmd import add_sync_parser

    add_sync_parser(sub)
    add_pack_parser(sub)
    for command in sub.choices.values():  # --verbose after the command word too
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``facekd`` console script: other libraries' output goes to the
    command's log file (``pipelines.logs``) unless ``--verbose``."""
    args = build_parser().parse_args(argv)
    _terminate_as_interrupt()
    logs.start(args.command, args.verbose, sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    finally:
        logs.stop()


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; facekd's errors become a message and an exit code."""
    from faces.callbacks import NonFiniteLossError
    from faces.data import FaceDataError
    from faces.progress import ProgressSettingError, every_minutes
    from pipelines.bundle import BundleError
    from pipelines.config import ConfigError
    from pipelines.orchestrator import PipelineBusyError
    from pipelines.tracking import TrackingError
    from teachers.checkpoint import CheckpointError

    terminal = logs.terminal()
    try:
        if args.command in ("run", "ablate"):
            every_minutes()  # a bad FACEKD_PROGRESS_MINUTES is refused before anything runs
        return args.func(args)
    except (
        ConfigError,
        FaceDataError,
        CheckpointError,
        PipelineBusyError,
        TrackingError,
        BundleError,
        ProgressSettingError,
    ) as exc:
        print(f"facekd: error: {exc}", file=terminal)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as exc:
        print(f"facekd: training stopped: {exc}", file=terminal)
        return EXIT_TRAINING_FAILED
    except KeyboardInterrupt:
        print(
            "facekd: interrupted; run the same command again to resume from the last checkpoint",
            file=terminal,
        )
        return EXIT_INTERRUPTED
    except Exception:
        logs.logged_exception("facekd failed")
        print(f"facekd: failed; the log of this run: {logs.log_path()}", file=terminal)
        raise


def _terminate_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop) ends like Ctrl-C: runs are left resumable, not failed."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (embedded use): keep default
        signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
