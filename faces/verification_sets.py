"""Verification sets: InsightFace ``.bin`` files, LFW ``pairs.txt`` and plain ImageFolders.

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

import io
import os
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from faces.data import FaceDataError, load_images, make_pairs, scan_image_folder
from faces.transforms import IMAGE_SIZE

__all__ = [
    "VerificationSet",
    "load_bin",
    "load_image_folder_set",
    "load_lfw_pairs",
    "load_verification_set",
    "parse_pairs_txt",
    "write_bin",
]


@dataclass(frozen=True)
class VerificationSet:
    """Images and pairs of one verification set; ``name`` goes into ``verify.<name>.*`` keys."""

    name: str
    images: torch.Tensor  # uint8 (N, 3, size, size) RGB
    pairs: np.ndarray  # int64 (P, 3): i, j, same


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


def _decode(data: bytes, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FaceDataError(f"cannot decode {where}: {exc}") from exc
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_bin(path: str | os.PathLike, size: int = IMAGE_SIZE) -> VerificationSet:
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
    # bytes decode and embed identically, so each distinct image is kept once.
    where: dict[bytes, int] = {}
    first: list[int] = []  # entry number of each distinct image, for error messages
    index = np.empty(len(bins), dtype=np.int64)
    for i, item in enumerate(bins):
        data = _as_bytes(item)
        if data is None:
            raise FaceDataError(f"{path}: image {i} is a {type(item).__name__}, not encoded bytes")
        if data not in where:
            where[data] = len(first)
            first.append(i)
        index[i] = where[data]
    images = torch.empty((len(first), 3, size, size), dtype=torch.uint8)
    for data, j in where.items():
        images[j] = torch.from_numpy(_decode(data, size, f"image {first[j]} of {path}"))
    pairs = np.stack([index[0::2], index[1::2], same.astype(np.int64)], axis=1)
    return VerificationSet(path.stem, images, pairs)


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


def load_lfw_pairs(
    root: str | os.PathLike, pairs_file: str | os.PathLike, size: int = IMAGE_SIZE
) -> VerificationSet:
    """LFW-layout images ``root/<name>/<name>_%04d.jpg`` and the pairs of ``pairs_file``."""
    root = Path(root)
    if not root.is_dir():
        raise FaceDataError(f"face data folder {root} does not exist")
    lines = parse_pairs_txt(pairs_file)
    where: dict[tuple[str, int], int] = {}
    paths: list[Path] = []
    rows = []
    for line in lines:
        ij = []
        for name, num in (line.a, line.b):
            if (name, num) not in where:
                p = root / name / f"{name}_{num:04d}.jpg"
                if not p.is_file():
                    raise FaceDataError(f"{pairs_file} names image {p}, which does not exist")
                where[(name, num)] = len(paths)
                paths.append(p)
            ij.append(where[(name, num)])
        rows.append((ij[0], ij[1], int(line.same)))
    images = load_images(paths, size)
    return VerificationSet(root.resolve().name, images, np.array(rows, dtype=np.int64))


# -- ImageFolder -----------------------------------------------------------------------------
def load_image_folder_set(
    root: str | os.PathLike, n_pairs: int = 3000, seed: int = 0, size: int = IMAGE_SIZE
) -> VerificationSet:
    """Balanced pairs of an ImageFolder with a fixed seed, as the pipeline's evaluation makes.

    Identities with fewer than 2 images are dropped first (like the pipeline's ``data.eval``);
    only the images that occur in pairs are decoded.
    """
    index = scan_image_folder(root, min_images=2)
    pairs = make_pairs(index.labels, n_pairs, seed)
    used = np.unique(pairs[:, :2])
    images = load_images([index.paths[int(i)] for i in used], size)
    remapped = np.concatenate([np.searchsorted(used, pairs[:, :2]), pairs[:, 2:]], axis=1)
    return VerificationSet(Path(root).resolve().name, images, remapped.astype(np.int64))


def load_verification_set(
    spec: str | os.PathLike,
    *,
    pairs_file: str | os.PathLike | None = None,
    n_pairs: int = 3000,
    seed: int = 0,
) -> VerificationSet:
    """A ``.bin`` file, an LFW-layout folder with ``pairs_file``, or an ImageFolder (own pairs)."""
    path = Path(spec)
    if path.is_file() or path.suffix.lower() == ".bin":
        if pairs_file is not None:
            raise FaceDataError(f"a pairs file goes with an image folder, not with the file {path}")
        return load_bin(path)
    if not path.exists():
        raise FaceDataError(f"verification data {path} does not exist")
    if pairs_file is not None:
        return load_lfw_pairs(path, pairs_file)
    return load_image_folder_set(path, n_pairs, seed)
