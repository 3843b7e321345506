"""``facekd sync FOLDER``: send metrics kept while the tracking server did not answer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_sync(args: argparse.Namespace) -> int:
    from pipelines.tracking.runs import OUTBOX, TrackingError, pending_outboxes, send_all

    folder = Path(args.folder)
    if not folder.is_dir():
        raise TrackingError(f"run folder {folder} does not exist")
    outboxes = pending_outboxes(folder)
    if not outboxes:
        print(f"nothing to send: no {OUTBOX} under {folder}")
        return 0
    sent = send_all(outboxes)
    print(f"sent {sent} metric value(s) from {len(outboxes)} file(s) under {folder}")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sync",
        help="send metrics that were kept in a run folder while the tracking server was down",
        description=__doc__,
    )
    p.add_argument("folder", help="a pipeline's output folder, e.g. runs/demo")
    p.set_defaults(func=_cmd_sync)
