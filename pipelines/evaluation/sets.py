"""A pipeline's evaluation sets (``data.eval``): fingerprints, identities, the FAR threshold.

``data.eval`` is null (people held out of ``data.train``), one set (a path, with
``data.eval_pairs_file`` / ``data.eval_name``) or a list of sets (paths or
``{path, name, pairs_file, pairs}``). Everything here works from the configuration alone:
names and checks need no image decoded (:class:`pipelines.training.data.DataContext` loads them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faces.data import listing_fingerprint
from faces.evaluate import FarThreshold
from faces.pairs_file import is_generic_pairs_file, parse_pairs_file
from faces.verification_sets import SetSpec, default_set_name
from pipelines.core.config import DataConfig, eval_specs
from teachers.checkpoint import sha256_file


def far_threshold(data: DataConfig) -> FarThreshold | None:
    """The fixed-FAR threshold setting, if ``data.threshold_from`` names a set."""
    if data.threshold_from is None:
        return None
    return FarThreshold(data.threshold_from, data.threshold_far)


def csv_identities(pairs_file: str | Path) -> set[str]:
    """The people of a CSV/TSV pairs file: the first folder of each image path, if any."""
    out = set()
    for pair in parse_pairs_file(pairs_file):
        for rel in (pair.a, pair.b):
            parts = Path(rel).parts
            if len(parts) > 1:
                out.add(parts[0])
    return out


def _set_fingerprint(spec: SetSpec, manifest: str = "cache") -> dict[str, Any]:
    path = Path(spec.path)
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": sha256_file(path)}
    listing = listing_fingerprint(path, manifest=manifest)
    out: dict[str, Any] = {"path": str(path.resolve()), "listing": listing}
    if spec.pairs_file:
        pairs = Path(spec.pairs_file)
        out["pairs_file"] = {"path": str(pairs.resolve()), "sha256": sha256_file(pairs)}
    return out


def eval_fingerprint(data: DataConfig) -> dict[str, Any]:
    """The ``eval`` and ``eval_pairs`` parts of the data fingerprint (one set: as before
    several sets existed, so finished single-set pipelines stay up to date)."""
    specs = eval_specs(data)
    out: dict[str, Any]
    if not specs:
        out = {"eval": None, "eval_pairs": data.eval_pairs}
    elif isinstance(data.eval, str):
        fixed = Path(data.eval).is_file() or data.eval_pairs_file is not None
        out = {
            "eval": _set_fingerprint(specs[0], data.manifest),
            "eval_pairs": None if fixed else data.eval_pairs,
        }
    else:
        sets = []
        for spec in specs:
            one = {"name": default_set_name(spec), **_set_fingerprint(spec, data.manifest)}
            if Path(spec.path).is_dir() and spec.pairs_file is None:
                one["pairs"] = spec.n_pairs or data.eval_pairs
            sets.append(one)
        out = {"eval": sets, "eval_pairs": None}
    if data.threshold_from is not None:
        out["threshold"] = {"from": data.threshold_from, "far": data.threshold_far}
    return out


def eval_identities(spec: SetSpec, manifest: str = "cache") -> set[str] | None:
    """The people of a folder set (for leaving them out of training); None for a ``.bin``.
    ``manifest``: where the folder's listing is cached (``data.manifest``)."""
    from faces.data import scan_image_folder

    path = Path(spec.path)
    if path.is_file():
        return None
    if spec.pairs_file is not None and is_generic_pairs_file(spec.pairs_file):
        return csv_identities(spec.pairs_file)
    min_images = 1 if spec.pairs_file else 2
    return set(scan_image_folder(path, min_images, manifest=manifest).identities)
