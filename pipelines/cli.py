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

from pipelines.commands import (  # noqa: E402
    ablate,
    align,
    bench,
    compare,
    doctor,
    evaluate,
    pack,
    privacy,
    profile,
    release,
    run,
    sweep,
    sync,
)
from pipelines.core import logs  # noqa: E402  (after the TF log setting)
from pipelines.orchestration.environment import facekd_version  # noqa: E402

COMMANDS = (
    run,
    ablate,
    sweep,
    evaluate,
    align,
    compare,
    privacy,
    profile,
    bench,
    release,
    doctor,
    sync,
    pack,
)
"""The verbs' modules (``pipelines/commands/``), in the order of ``facekd --help``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facekd",
        description="Distil face recognition teachers into 1-bit students for Larq Compute Engine.",
    )
    parser.add_argument("--version", action="version", version=f"facekd {facekd_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    for command in sub.choices.values():  # --verbose after the command word too
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``facekd`` console script: other libraries' output goes to the
    command's log file (``pipelines.core.logs``) unless ``--verbose``."""
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
    from faces.progress import ProgressSettingError, every_seconds
    from pipelines.core.config import ConfigError
    from pipelines.orchestration.orchestrator import PipelineBusyError
    from pipelines.tracking.bundle import BundleError
    from pipelines.tracking.runs import TrackingError
    from teachers.checkpoint import CheckpointError

    terminal = logs.terminal()
    try:
        if args.command in ("run", "ablate", "sweep"):
            every_seconds()  # a bad FACEKD_PROGRESS_SECONDS is refused before anything runs
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
