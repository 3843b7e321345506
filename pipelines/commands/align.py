"""``facekd align SRC DST``: raw photos -> 112x112 ArcFace-aligned crops (see faces.align)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_NOTHING_ALIGNED = 1
EXIT_BAD_INPUT = 2
_LIST_AT_MOST = 10


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of pixels, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``align`` sub-command to ``subparsers`` (from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "align",
        help="detect faces in raw photos and write 112x112 ArcFace-aligned crops",
        description=(
            "Detect the face in every photo of SRC/<person>/<image> (and SRC/<image>) with "
            "MTCNN, align it to the ArcFace 5-point template and write DST/<person>/<image>.jpg "
            "(112x112) plus DST/align_report.json."
        ),
    )
    parser.add_argument("src", help="folder of raw photos, SRC/<person>/<image>")
    parser.add_argument("dst", help="output folder for the aligned crops (outside SRC)")
    parser.add_argument(
        "--min-face-size",
        type=_positive_int,
        default=20,
        metavar="N",
        help="smallest face searched for, in pixels (default: 20)",
    )
    multiple = parser.add_mutually_exclusive_group()
    multiple.add_argument(
        "--keep-largest",
        dest="multiple",
        action="store_const",
        const="keep_largest",
        help="when a photo shows several faces, align the main one: largest, near the centre "
        "(default)",
    )
    multiple.add_argument(
        "--skip-multiple",
        dest="multiple",
        action="store_const",
        const="skip",
        help="when a photo shows several faces, skip it",
    )
    parser.set_defaults(multiple="keep_largest", func=run_align)
    return parser


def _print_list(title: str, items: list[str]) -> None:
    if not items:
        return
    print(f"{title}:")
    for item in items[:_LIST_AT_MOST]:
        print(f"  {item}")
    if len(items) > _LIST_AT_MOST:
        print(f"  ... and {len(items) - _LIST_AT_MOST} more (see the report)")


def run_align(args: argparse.Namespace) -> int:
    """Run ``facekd align``; prints a summary. Returns 0, or 1 when no face was aligned.

    FaceDataError (missing SRC, DST inside SRC, no images) propagates to the CLI's handler;
    a missing detector package is reported here with exit code 2.
    """
    from faces.align import DetectorUnavailableError, align_folder
    from faces.progress import on_terminal

    try:
        report = align_folder(
            args.src,
            args.dst,
            progress=on_terminal(),
            min_face_size=args.min_face_size,
            multiple=args.multiple,
        )
    except DetectorUnavailableError as exc:
        print(f"facekd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    c = report.counts()
    several_note = "aligned the main face" if args.multiple == "keep_largest" else "skipped"
    print(f"aligned {c['aligned']} of {c['images']} images from {args.src} into {args.dst}")
    print(f"  no face:        {c['no_face']}")
    print(f"  several faces:  {c['several_faces']} ({several_note})")
    print(f"  unreadable:     {c['unreadable']}")
    _print_list("no face", report.no_face)
    _print_list("several faces", [f"{s.source} ({s.faces} faces)" for s in report.several_faces])
    _print_list("unreadable", [f"{u.source}: {u.error}" for u in report.unreadable])
    print(f"report: {report.report_path}")
    return 0 if c["aligned"] else EXIT_NOTHING_ALIGNED
