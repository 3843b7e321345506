"""Read speed: InsightFace RecordIO (``train.rec``) vs the same JPEGs in an ImageFolder.

Writes 10,000 synthetic 112x112 JPEG faces (200 identities x 50 images) into a temporary
ImageFolder, packs them into ``train.rec``/``train.idx`` with ``faces.recordio``, then decodes
all of them once through ``RecordIOFaces`` and once from the folder with ``faces.data.load_image``
(the same PIL decoder), single process, alternating, ``--reps`` times each, and prints
images/s and the ratio. The files were just written, so both read from the page cache: this
compares per-image overheads (one open/stat per file vs a seek in one file), not disk speed.

    .venv/bin/python benchmarks/recordio_vs_imagefolder.py [--identities 200] [--per 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faces.data import load_image, scan_image_folder  # noqa: E402
from faces.recordio import RecordIOFaces, write_recordio  # noqa: E402
from faces.synthetic import write_synthetic_faces  # noqa: E402


def _time_recordio(root: Path) -> tuple[float, int]:
    start = time.perf_counter()
    ds = RecordIOFaces(root)  # opening (index, identity records) counts as reading
    n = 0
    for i in range(len(ds)):
        ds[i]
        n += 1
    ds.close()
    return time.perf_counter() - start, n


def _time_folder(root: Path) -> tuple[float, int]:
    start = time.perf_counter()
    index = scan_image_folder(root, cache=False)  # listing counts as reading
    for p in index.paths:
        load_image(p)
    return time.perf_counter() - start, len(index)


def main(argv: list[str] | None = None) -> int:
    """Write the sets, time both readers, print images/s."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--per", type=int, default=50, help="images per identity")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        folder = write_synthetic_faces(Path(tmp) / "faces", args.identities, args.per, seed=0)
        index = scan_image_folder(folder, cache=False)
        samples = (
            (p.read_bytes(), int(lab)) for p, lab in zip(index.paths, index.labels, strict=True)
        )
        rec = write_recordio(Path(tmp) / "rec", samples)
        rec_mb = (rec / "train.rec").stat().st_size / 1e6
        print(
            f"wrote {len(index)} JPEGs ({len(index.identities)} identities) and train.rec "
            f"({rec_mb:.1f} MB) in {time.perf_counter() - t0:.1f} s"
        )
        results: dict[str, list[float]] = {"recordio": [], "imagefolder": []}
        for rep in range(args.reps):
            for name, fn, root in (
                ("recordio", _time_recordio, rec),
                ("imagefolder", _time_folder, folder),
            ):
                seconds, n = fn(root)
                results[name].append(n / seconds)
                print(
                    f"rep {rep + 1} {name:12s} {n} images in {seconds:6.2f} s: {n / seconds:7.0f}/s"
                )
        best = {k: max(v) for k, v in results.items()}
        print(
            f"best of {args.reps}: RecordIOFaces {best['recordio']:.0f} images/s, "
            f"ImageFolder load_image {best['imagefolder']:.0f} images/s, "
            f"ratio {best['recordio'] / best['imagefolder']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
