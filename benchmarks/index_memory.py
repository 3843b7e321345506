"""Memory of an ImageFolder index's paths: a tuple of pathlib.Path vs faces.data.PathList.

Builds ``--images`` synthetic paths (``root/id_012345/img_0001.jpg``, ``--per-person`` images
per person) from the same in-memory listing both ways, side by side in this one run: the
tuple of one ``Path`` per image that ``scan_image_folder`` used to return, and the compact
``PathList`` it returns now. Reported for each: memory still held after building it and the
peak while building it (tracemalloc, which sees numpy's buffers too; the listing itself is
made before tracing starts), memory held after ``os.fspath`` of every path (what opening
every image does once: a ``Path`` caches its string), build seconds, pickled bytes (what a
spawned loader worker receives) and the seconds to shuffle it (``take`` of a permutation /
a tuple comprehension).

    .venv/bin/python benchmarks/index_memory.py [--images 1000000] [--per-person 100]
        [--json benchmarks/results/index_memory.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from faces.data import PathList  # noqa: E402

MIB = 2**20


def listing(images: int, per_person: int) -> dict[str, list[str]]:
    """``{person: file names}`` as ``list_image_folder`` gives it."""
    people = -(-images // per_person)
    out = {}
    for p in range(people):
        n = min(per_person, images - p * per_person)
        out[f"id_{p:06d}"] = [f"img_{i:04d}.jpg" for i in range(n)]
    return out


def old_tuple(root: Path, people: dict[str, list[str]]) -> tuple[Path, ...]:
    paths: list[Path] = []
    for person, files in sorted(people.items()):
        paths.extend(root / person / f for f in files)
    return tuple(paths)


def new_list(root: Path, people: dict[str, list[str]]) -> PathList:
    """As ``scan_image_folder`` builds it."""
    kept = sorted(people.items())
    return PathList.from_names(root, (f"{p}/{f}" for p, files in kept for f in files))


def measure(build: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    value = build()
    seconds = time.perf_counter() - start
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    for p in value:  # what opening every image does: a Path caches its str on first use
        os.fspath(p)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return value, {
        "held_mib": (held - base) / MIB,
        "peak_mib": (peak - base) / MIB,
        "held_after_use_mib": (used - base) / MIB,
        "build_s": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--per-person", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    root = Path("/data/glint360k/images")
    people = listing(args.images, args.per_person)
    order = np.random.default_rng(0).permutation(args.images)
    report: dict[str, Any] = {"images": args.images, "per_person": args.per_person}
    for key, build in (("tuple_of_path", old_tuple), ("pathlist", new_list)):
        value, row = measure(lambda build=build: build(root, people))
        start = time.perf_counter()
        row["pickle_mib"] = len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)) / MIB
        row["pickle_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if isinstance(value, PathList):
            value.take(order)
        else:
            tuple(value[i] for i in order)
        row["shuffle_s"] = time.perf_counter() - start
        row["bytes_per_path"] = row["held_mib"] * MIB / args.images
        report[key] = row
        if key == "tuple_of_path":
            first = value
        else:
            report["equal"] = bool(value == first)
        del value
    del first
    old, new = report["tuple_of_path"], report["pathlist"]
    report["held_ratio"] = old["held_mib"] / new["held_mib"]

    print(f"{args.images:,} paths like {root}/id_000000/img_0000.jpg")
    print(
        f"{'':16} {'held MiB':>9} {'peak MiB':>9} {'B/path':>7} {'after use':>9} "
        f"{'build s':>8} {'pickle MiB':>10} {'shuffle s':>9}"
    )
    for key in ("tuple_of_path", "pathlist"):
        r = report[key]
        print(
            f"{key:16} {r['held_mib']:9.1f} {r['peak_mib']:9.1f} {r['bytes_per_path']:7.1f} "
            f"{r['held_after_use_mib']:9.1f} {r['build_s']:8.2f} {r['pickle_mib']:10.1f} "
            f"{r['shuffle_s']:9.2f}"
        )
    print(f"held: {report['held_ratio']:.1f}x smaller; equal element by element: {report['equal']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
