"""Verification sets: InsightFace ``.bin``, LFW ``pairs.txt``, CSV/TSV pairs files, ImageFolders.

Every set comes back as a :class:`VerificationSet`: uint8 images (N, 3, 112, 112) RGB and
pairs ``(i, j, same)`` int64 in the protocol's order (the 10-fold protocol uses contiguous
folds, so the order is kept exactly as the file gives it).

``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin`` from InsightFace) are pickles of
``(bins, issame_list)``. A pickle can run any code when it is loaded, so they are read with a
restricted unpickler that resolves no global except the few that data needs:

* plain lists, tuples, bytes (Python 2 ``str``), bools and ints need no global at all;
* ``_codecs.encode``: Python 3 writes ``bytes`` this way under pickle protocols 0-2; it is
  replaced by a function that only accepts the ``latin1`` codec;
* ``numpy.core.multiarray._reconstruct`` / ``scalar``, ``numpy.core.numeric._frombuffer``
  (pickle protocol 5), ``numpy.ndarray`` and ``numpy.dtype`` (also under ``numpy._core``, numpy
  2's name): some files store ``issame_list`` as a numpy bool array or a list of
  ``numpy.bool_``. They are replaced by wrappers that only build arrays of plain dtypes from raw
  bytes: object dtypes (whose items would be further pickled objects) are refused, and
  ``numpy.ndarray`` resolves to a token that ``_reconstruct`` accepts but nothing can call.

Any other global (``os.system``, ``builtins.eval``, ``subprocess.*``, ...) stops loading with a
:class:`~faces.data.FaceDataError` naming the file and the global, before it is called.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faces.data import FaceDataError, make_pairs, scan_image_folder
from faces.image_pool import ImagePool
from faces.pairs_file import is_generic_pairs_file, parse_pairs_file
from faces.transforms import IMAGE_SIZE

__all__ = [
    "SetSpec",
    "VerificationSet",
    "default_set_name",
    "load_bin",
    "load_image_folder_set",
    "load_lfw_pairs",
    "load_pairs_file_set",
    "load_verification_set",
    "load_verification_sets",
    "parse_pairs_txt",
    "write_bin",
]


@dataclass(frozen=True)
class VerificationSet:
    """Images and pairs of one verification set; ``name`` goes into ``verify.<name>.*`` keys.

    Sets loaded together (:func:`load_verification_sets`) share one ``images`` tensor, the
    distinct images of all of them. ``folds`` (one id per pair) comes from a pairs file with a
    ``fold`` column; None means the protocol's 10 contiguous folds."""

    name: str
    images: torch.Tensor  # uint8 (N, 3, size, size) RGB
    pairs: np.ndarray  # int64 (P, 3): i, j, same
    folds: np.ndarray | None = None


@dataclass(frozen=True)
class SetSpec:
    """Where a verification set comes from: a ``.bin``, an ImageFolder (``n_pairs`` seeded
    pairs), or an image root with ``pairs_file`` (LFW ``pairs.txt`` or a CSV/TSV pairs file);
    ``name`` defaults to :func:`default_set_name`."""

    path: str
    name: str | None = None
    pairs_file: str | None = None
    n_pairs: int | None = None


def _metric_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", name)


def default_set_name(spec: SetSpec) -> str:
    """``name``, else a ``.bin``'s stem, a CSV/TSV pairs file's stem, or the folder's name
    (characters that metric keys do not allow become ``_``)."""
    if spec.name:
        return spec.name
    path = Path(spec.path)
    if path.is_file() or path.suffix.lower() == ".bin":
        return _metric_safe(path.stem)
    if spec.pairs_file is not None and is_generic_pairs_file(spec.pairs_file):
        return _metric_safe(Path(spec.pairs_file).stem)
    return _metric_safe(path.resolve().name)


# -- restricted unpickling -------------------------------------------------------------------
def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` (protocols 0-2): latin1 only."""
    if not isinstance(obj, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return obj.encode("latin1", errors)


def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy arrays of Python objects are not allowed")
    return dtype


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` (only an argument of ``_reconstruct``, never callable)."""


_NDARRAY = _NdarrayToken()


def _safe_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError(f"numpy _reconstruct of {cls!r} is not allowed")
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's ``_frombuffer`` (arrays under pickle protocol 5), plain dtypes only."""
    return np.frombuffer(buf, dtype=_safe_dtype(dtype)).reshape(shape, order=order).copy()


def _safe_scalar(dtype: Any, *args: Any) -> Any:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import scalar

    return scalar(_safe_dtype(dtype), *args)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = _safe_reconstruct
        table[(f"{core}.multiarray", "scalar")] = _safe_scalar
        table[(f"{core}.numeric", "_frombuffer")] = _safe_frombuffer
    table[("numpy", "ndarray")] = _NDARRAY
    table[("numpy", "dtype")] = _safe_dtype
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of :func:`_allowed_globals` (see module doc)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def _as_bytes(item: Any) -> bytes | None:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, str):  # a Python 2 str read with encoding="latin1": lossless
        return item.encode("latin1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    return None


def load_bin(path: str | os.PathLike, size: int = IMAGE_SIZE) -> VerificationSet:
    """Read an InsightFace verification ``.bin`` (see :func:`_bin_pairs`)."""
    pool = ImagePool(size)
    pairs = _bin_pairs(Path(path), pool)
    return VerificationSet(Path(path).stem, pool.images(), pairs)


def _bin_pairs(path: Path, pool: ImagePool) -> np.ndarray:
    """Read an InsightFace verification ``.bin``: pair k is entries (2k, 2k + 1), file order.

    Repeated images (the same bytes) are decoded once; pairs index the distinct images.
    """
    path = Path(path)
    if not path.is_file():
        raise FaceDataError(f"verification file {path} does not exist")
    try:
        with open(path, "rb") as f:
            # latin1 turns Python 2 str into str losslessly (re-encoded below) and is what numpy
            # needs for Python 2 array pickles.
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refused global"):
            raise FaceDataError(
                f"{path}: {exc}; a verification .bin holds only images and labels, so this "
                "file is corrupt or crafted (nothing in it was run)"
            ) from None
        raise FaceDataError(f"{path} is not a verification .bin pickle: {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as exc:
        raise FaceDataError(f"{path} is not a verification .bin pickle: {exc!r}") from exc
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        raise FaceDataError(f"{path}: expected a pickled (bins, issame_list), got {type(obj)}")
    bins, issame = obj
    try:
        labels = np.asarray(issame)
    except (TypeError, ValueError):
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or labels.dtype.kind not in "biu" or not np.isin(labels, (0, 1)).all():
        raise FaceDataError(f"{path}: issame_list is not a list of booleans")
    same = labels.astype(bool)
    if not isinstance(bins, list | tuple) or len(bins) != 2 * len(same):
        n = len(bins) if isinstance(bins, list | tuple) else type(bins).__name__
        raise FaceDataError(
            f"{path}: {len(same)} pairs need {2 * len(same)} images, the file holds {n}"
        )
    if len(same) == 0:
        raise FaceDataError(f"{path} holds no pairs")
    # Files repeat an image in every pair it belongs to (lfw.bin: 12000 entries); identical
    # bytes decode and embed identically, so the pool keeps each distinct image once.
    index = np.empty(len(bins), dtype=np.int64)
    for i, item in enumerate(bins):
        data = _as_bytes(item)
        if data is None:
            raise FaceDataError(f"{path}: image {i} is a {type(item).__name__}, not encoded bytes")
        index[i] = pool.add_bytes(data, f"image {i} of {path}")
    return np.stack([index[0::2], index[1::2], same.astype(np.int64)], axis=1)


def write_bin(
    path: str | os.PathLike,
    image_bytes_pairs: Iterable[tuple[bytes, bytes]],
    issame: Iterable[bool],
) -> Path:
    """Write an InsightFace-style ``.bin``: pickle (protocol 4) of ``(bins, issame_list)``."""
    path = Path(path)
    bins: list[bytes] = []
    for a, b in image_bytes_pairs:
        bins.extend([bytes(a), bytes(b)])
    same = [bool(s) for s in issame]
    if len(bins) != 2 * len(same):
        raise ValueError(f"{len(bins) // 2} image pairs but {len(same)} issame labels")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump((bins, same), f, protocol=4)
    os.replace(tmp, path)
    return path


# -- LFW pairs.txt ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PairLine:
    """One line of ``pairs.txt``: two (name, image number) and whether they are the same."""

    a: tuple[str, int]
    b: tuple[str, int]
    same: bool


def parse_pairs_txt(path: str | os.PathLike) -> list[PairLine]:
    """Parse LFW ``pairs.txt`` (with a ``folds<TAB>n`` or ``n`` header line, or without).

    Matched lines are ``name n1 n2``, mismatched ``name1 n1 name2 n2`` (tabs or spaces). With a
    two-number header the pair count must be ``2 * folds * n``. Order is kept.
    """
    path = Path(path)
    if not path.is_file():
        raise FaceDataError(f"pairs file {path} does not exist")
    lines = path.read_text(errors="replace").splitlines()
    out: list[PairLine] = []
    expected: int | None = None  # pairs announced by the header line
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if not out and expected is None and all(re.fullmatch(r"\d+", f) for f in fields):
            if len(fields) == 2:  # "10<TAB>300": folds, matched (= mismatched) pairs per fold
                expected = 2 * int(fields[0]) * int(fields[1])
                continue
            if len(fields) == 1:  # "1100" (pairsDevTrain.txt): matched (= mismatched) pairs
                expected = 2 * int(fields[0])
                continue
        try:
            if len(fields) == 3:
                out.append(PairLine((fields[0], int(fields[1])), (fields[0], int(fields[2])), True))
            elif len(fields) == 4:
                out.append(
                    PairLine((fields[0], int(fields[1])), (fields[2], int(fields[3])), False)
                )
            else:
                raise ValueError
        except ValueError:
            raise FaceDataError(
                f"{path} line {lineno}: expected 'name n1 n2' or 'name1 n1 name2 n2', "
                f"got {line.strip()[:80]!r}"
            ) from None
    if not out:
        raise FaceDataError(f"pairs file {path} holds no pairs")
    if expected is not None and expected != len(out):
        raise FaceDataError(
            f"{path}: the header announces {expected} pairs, the file holds {len(out)}"
        )
    return out


def _lfw_pairs(root: Path, pairs_file: str | os.PathLike, pool: ImagePool) -> np.ndarray:
    """Pairs of an LFW ``pairs.txt`` over ``root/<name>/<name>_%04d.jpg``, images pooled."""
    rows = []
    for line in parse_pairs_txt(pairs_file):
        ij = []
        for name, num in (line.a, line.b):
            p = root / name / f"{name}_{num:04d}.jpg"
            if not p.is_file():
                raise FaceDataError(f"{pairs_file} names image {p}, which does not exist")
            ij.append(pool.add_file(p))
        rows.append((ij[0], ij[1], int(line.same)))
    return np.array(rows, dtype=np.int64)


def _csv_pairs(
    root: Path, pairs_file: str | os.PathLike, pool: ImagePool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pairs (and folds, with a ``fold`` column) of a CSV/TSV pairs file over ``root``."""
    parsed = parse_pairs_file(pairs_file)
    rows = []
    for pair in parsed:
        ij = []
        for rel in (pair.a, pair.b):
            p = root / rel
            if not p.is_file():
                raise FaceDataError(
                    f"{pairs_file} line {pair.line}: image {p} does not exist (paths are "
                    f"relative to {root})"
                )
            ij.append(pool.add_file(p, f"image {p} ({pairs_file} line {pair.line})"))
        rows.append((ij[0], ij[1], int(pair.same)))
    folds = None
    if parsed[0].fold is not None:
        folds = np.array([p.fold for p in parsed], dtype=np.int64)
        if len(np.unique(folds)) < 2:
            raise FaceDataError(
                f"{pairs_file}: the fold column names one fold ({int(folds[0])}); the protocol "
                "needs at least 2"
            )
    return np.array(rows, dtype=np.int64), folds


def _folder_pairs(
    root: Path, n_pairs: int, seed: int, pool: ImagePool, manifest: str = "cache"
) -> np.ndarray:
    """Balanced seeded pairs of an ImageFolder (people with >= 2 images), images pooled."""
    index = scan_image_folder(root, min_images=2, manifest=manifest)
    pairs = make_pairs(index.labels, n_pairs, seed)
    used = np.unique(pairs[:, :2])
    rows = np.array([pool.add_file(index.paths[int(i)]) for i in used], dtype=np.int64)
    return np.concatenate([rows[np.searchsorted(used, pairs[:, :2])], pairs[:, 2:]], axis=1)


def _load_into(
    spec: SetSpec, pool: ImagePool, n_pairs: int, seed: int, manifest: str = "cache"
) -> tuple[str, np.ndarray, np.ndarray | None]:
    """Name, pairs (rows of ``pool``) and folds of one set."""
    path = Path(spec.path)
    name = default_set_name(spec)
    if path.is_file() or path.suffix.lower() == ".bin":
        if spec.pairs_file is not None:
            raise FaceDataError(f"a pairs file goes with an image folder, not with the file {path}")
        return name, _bin_pairs(path, pool), None
    if not path.is_dir():
        raise FaceDataError(f"verification data {path} does not exist")
    if spec.pairs_file is None:
        return name, _folder_pairs(path, spec.n_pairs or n_pairs, seed, pool, manifest), None
    if not Path(spec.pairs_file).is_file():
        raise FaceDataError(f"pairs file {spec.pairs_file} does not exist")
    if is_generic_pairs_file(spec.pairs_file):
        pairs, folds = _csv_pairs(path, spec.pairs_file, pool)
        return name, pairs, folds
    return name, _lfw_pairs(path, spec.pairs_file, pool), None


def load_verification_sets(
    specs: list[SetSpec],
    n_pairs: int = 3000,
    seed: int = 0,
    size: int = IMAGE_SIZE,
    manifest: str = "cache",
) -> list[VerificationSet]:
    """Several sets at once: each distinct image decoded once, one ``images`` tensor shared
    by all (so a model embeds every face once however many sets hold it).

    Set names must be distinct (they key the metrics). ``manifest``: where ImageFolder
    listings are cached (:func:`faces.data.manifest_path`)."""
    pool = ImagePool(size)
    loaded = [_load_into(spec, pool, n_pairs, seed, manifest) for spec in specs]
    names = [name for name, _, _ in loaded]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FaceDataError(f"two verification sets are named {dupes[0]!r}: give each its own name")
    images = pool.images()
    return [VerificationSet(name, images, pairs, folds) for name, pairs, folds in loaded]


def _existing_folder(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FaceDataError(f"face data folder {root} does not exist")
    return root


def load_lfw_pairs(
    root: str | os.PathLike, pairs_file: str | os.PathLike, size: int = IMAGE_SIZE
) -> VerificationSet:
    """LFW-layout images ``root/<name>/<name>_%04d.jpg`` and the pairs of ``pairs_file``."""
    root = _existing_folder(root)
    pool = ImagePool(size)
    pairs = _lfw_pairs(root, pairs_file, pool)
    return VerificationSet(root.resolve().name, pool.images(), pairs)


def load_pairs_file_set(
    root: str | os.PathLike, pairs_file: str | os.PathLike, size: int = IMAGE_SIZE
) -> VerificationSet:
    """Images under ``root`` and the pairs (and folds) of a CSV/TSV pairs file."""
    root = _existing_folder(root)
    pool = ImagePool(size)
    pairs, folds = _csv_pairs(root, pairs_file, pool)
    return VerificationSet(_metric_safe(Path(pairs_file).stem), pool.images(), pairs, folds)


# -- ImageFolder -----------------------------------------------------------------------------
def load_image_folder_set(
    root: str | os.PathLike, n_pairs: int = 3000, seed: int = 0, size: int = IMAGE_SIZE
) -> VerificationSet:
    """Balanced pairs of an ImageFolder with a fixed seed, as the pipeline's evaluation makes.

    Identities with fewer than 2 images are dropped first (like the pipeline's ``data.eval``);
    only the images that occur in pairs are decoded.
    """
    pool = ImagePool(size)
    pairs = _folder_pairs(Path(root), n_pairs, seed, pool)
    return VerificationSet(Path(root).resolve().name, pool.images(), pairs)


def load_verification_set(
    spec: str | os.PathLike,
    *,
    pairs_file: str | os.PathLike | None = None,
    n_pairs: int = 3000,
    seed: int = 0,
) -> VerificationSet:
    """A ``.bin`` file, an image folder with ``pairs_file`` (LFW ``pairs.txt`` or CSV/TSV),
    or an ImageFolder (own pairs)."""
    one = SetSpec(str(spec), pairs_file=None if pairs_file is None else str(pairs_file))
    return load_verification_sets([one], n_pairs, seed)[0]
