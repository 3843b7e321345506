"""``facekd pack SRC DST``: an ImageFolder or RecordIO set as chunks for streaming training."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_pack(args: argparse.Namespace) -> int:
    from faces.chunks import pack
    from faces.data import FaceDataError

    src = Path(args.src)
    if not src.is_dir():
        raise FaceDataError(f"pack: {src} is not a folder (an ImageFolder or a RecordIO folder)")
    count = pack(src, args.dst, chunk_bytes=args.chunk_bytes, workers=args.workers)
    print(f"packed {count} faces of {src} into {args.dst} (data.train: {args.dst})")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pack",
        help="write an ImageFolder or RecordIO set as litdata chunks (streaming, many nodes)",
        description=__doc__,
    )
    p.add_argument("src", help="ImageFolder root/<person>/<image> or a folder with train.rec")
    p.add_argument("dst", help="new folder for the chunks (index.json, chunk-*.bin)")
    p.add_argument("--chunk-bytes", default="64MB", help="size of one chunk (default 64MB)")
    p.add_argument("--workers", type=int, default=1, help="packing processes (default 1)")
    p.set_defaults(func=_cmd_pack)
