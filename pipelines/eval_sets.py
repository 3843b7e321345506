"""A pipeline's evaluation sets (``data.eval``): what they are, their names, checks, fingerprint.

``data.eval`` is null (people held out of ``data.train``), one set (a path, with
``data.eval_pairs_file`` / ``data.eval_name``) or a list of sets (paths or
``{path, name, pairs_file, pairs}``). Everything here works from the configuration alone:
names and checks need no image decoded (:class:`pipelines.data.DataContext` loads them).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from faces.data import listing_fingerprint
from faces.evaluate import FarThreshold
from faces.pairs_file import is_generic_pairs_file, parse_pairs_file
from faces.verification_sets import SetSpec, default_set_name
from pipelines.config import ConfigError, DataConfig, PipelineConfig

RESERVED_NAMES = ("mean",)  # verify.mean.acc averages the sets


def eval_specs(data: DataConfig) -> list[SetSpec]:
    """One :class:`SetSpec` per configured set; empty when people are held out of train."""
    ev = data.eval
    if not ev or ev == data.train:
        return []
    if isinstance(ev, str):
        return [SetSpec(ev, data.eval_name, data.eval_pairs_file)]
    return [
        SetSpec(e) if isinstance(e, str) else SetSpec(e.path, e.name, e.pairs_file, e.pairs)
        for e in ev
    ]


def heldout_name(data: DataConfig) -> str:
    """The name of the held-out set: ``eval_name``, ``synthetic`` or ``<train>_heldout``."""
    if data.eval_name:
        return data.eval_name
    if data.train == "synthetic":
        return "synthetic"
    names = [Path(f).resolve().name for f in [data.train, *data.extra_train]]
    return "-".join(names) + "_heldout"  # MLflow metric names allow no "+"


def set_names(data: DataConfig) -> list[str]:
    """The names of the evaluation sets, in order (metric keys ``verify.<name>.*``)."""
    specs = eval_specs(data)
    return [default_set_name(s) for s in specs] if specs else [heldout_name(data)]


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


def _check_one(spec: SetSpec, key: str, pairs_key: str, source: Path) -> None:
    """``key`` names the set's path in errors, ``pairs_key`` its pairs file."""
    ev = Path(spec.path)
    if not ev.exists():
        raise ConfigError(f"{source}: {key}: {spec.path} does not exist")
    if ev.is_file() and ev.suffix.lower() != ".bin":
        raise ConfigError(
            f"{source}: {key}: {spec.path} is a file but not an InsightFace .bin "
            "(expected an ImageFolder, a .bin or a folder with a pairs file)"
        )
    if spec.pairs_file is None:
        return
    if not ev.is_dir():
        raise ConfigError(
            f"{source}: {pairs_key}: needs {key} to be an image folder (got {spec.path!r})"
        )
    if not Path(spec.pairs_file).is_file():
        raise ConfigError(f"{source}: {pairs_key}: file {spec.pairs_file} does not exist")


def check_eval_config(config: PipelineConfig, source: Path) -> None:
    """Files and folders of ``data.eval`` exist, set names are distinct, ``threshold_from``
    names one of them; ConfigError names the file and key."""
    data = config.data
    if isinstance(data.eval, list):
        if not data.eval:
            raise ConfigError(f"{source}: data.eval: an empty list (null holds people out)")
        singles = {"eval_pairs_file": data.eval_pairs_file, "eval_name": data.eval_name}
        for key, value in singles.items():
            if value is not None:
                raise ConfigError(
                    f"{source}: data.{key}: with a list of evaluation sets, give each set its own "
                    f"({key.removeprefix('eval_')}: in the data.eval entry)"
                )
        for i, spec in enumerate(eval_specs(data)):
            entry = f"data.eval[{i}]"
            where = entry if isinstance(data.eval[i], str) else f"{entry}.path"
            _check_one(spec, where, f"{entry}.pairs_file", source)
    elif data.eval_pairs_file and not data.eval:
        raise ConfigError(
            f"{source}: data.eval_pairs_file: needs data.eval to be an image folder (got None)"
        )
    elif data.eval:
        spec = SetSpec(data.eval, pairs_file=data.eval_pairs_file)
        _check_one(spec, "data.eval", "data.eval_pairs_file", source)
    given = [("data.eval_name", data.eval_name)]
    if isinstance(data.eval, list):
        given = [
            (f"data.eval[{i}].name", getattr(e, "name", None)) for i, e in enumerate(data.eval)
        ]
    for key, name in given:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise ConfigError(
                f"{source}: {key}: {name!r} is not a valid set name (letters, digits, _ and -: "
                "it becomes part of metric keys)"
            )
    names = set_names(data)
    for name in names:
        if name in RESERVED_NAMES:
            raise ConfigError(
                f"{source}: data.eval: the set name {name!r} is reserved (verify.mean.acc "
                "averages the sets); give the set another name"
            )
        if names.count(name) > 1:
            raise ConfigError(
                f"{source}: data.eval: two sets are named {name!r}; give them distinct names "
                "({path: ..., name: ...})"
            )
    if data.threshold_from is not None and data.threshold_from not in names:
        raise ConfigError(
            f"{source}: data.threshold_from: {data.threshold_from!r} is not an evaluation set "
            f"(sets: {', '.join(names)})"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _set_fingerprint(spec: SetSpec, manifest: str = "cache") -> dict[str, Any]:
    path = Path(spec.path)
    if path.is_file():
        return {"path": str(path.resolve()), "sha256": _sha256(path)}
    listing = listing_fingerprint(path, manifest=manifest)
    out: dict[str, Any] = {"path": str(path.resolve()), "listing": listing}
    if spec.pairs_file:
        pairs = Path(spec.pairs_file)
        out["pairs_file"] = {"path": str(pairs.resolve()), "sha256": _sha256(pairs)}
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
