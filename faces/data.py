"""Aligned face data in ImageFolder layout (``root/<person>/<image>``) and verification pairs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import operator
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsIndex, overload

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from faces.cache import cache_path
from faces.transforms import IMAGE_SIZE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp"}


class FaceDataError(ValueError):
    """Bad face data: the message names the file or folder and what is wrong."""


class PathList(Sequence[Path]):
    """An immutable sequence of image paths, stored compactly.

    Behaves like the ``tuple[Path, ...]`` it replaces (``len``, ``[i]``, slices, iteration,
    ``in``, ``==`` with a tuple or list of paths) but holds no Python object per path: the
    names relative to their root are one UTF-8 byte buffer (``os.fsencode``, so undecodable
    names round-trip) with int64 offsets, and each item is made on access as ``root / name``.
    Indexes merged from several folders keep one root each and a small root number per path.
    About 30 bytes per image (``id_012345/img_0001.jpg``) instead of 200 for a ``Path``, 294
    once its string is cached (``benchmarks/index_memory.py``); pickling copies three arrays,
    and forked loader workers share their pages (no reference count per path to touch).
    """

    __slots__ = ("_roots", "_data", "_offsets", "_root_of")

    def __init__(
        self,
        roots: Sequence[str | os.PathLike],
        data: np.ndarray,
        offsets: np.ndarray,
        root_of: np.ndarray | None = None,
    ) -> None:
        self._roots = tuple(Path(r) for r in roots)
        self._data = np.ascontiguousarray(data, dtype=np.uint8)
        self._offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self._root_of = None if root_of is None else np.asarray(root_of, dtype=np.int32)
        if len(self._offsets) < 1 or self._offsets[-1] != len(self._data):
            raise ValueError("PathList: offsets do not end at the buffer's length")
        if root_of is None and len(self._roots) != 1:
            raise ValueError("PathList: several roots need a root number per path")

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_names(cls, root: str | os.PathLike, names: Iterable[str | bytes]) -> PathList:
        """Paths ``root / name`` for relative ``names`` (``"person/image.jpg"``).

        ``names`` is read in blocks: a generator is never held whole as Python objects."""
        blocks: list[np.ndarray] = []
        lengths: list[np.ndarray] = [np.zeros(1, np.int64)]
        it = iter(names)
        while block := [os.fsencode(n) for n in itertools.islice(it, 1 << 16)]:
            lengths.append(np.fromiter(map(len, block), np.int64, len(block)))
            blocks.append(np.frombuffer(b"".join(block), dtype=np.uint8))
        data = np.concatenate(blocks) if blocks else np.zeros(0, np.uint8)
        return cls((root,), data, np.cumsum(np.concatenate(lengths)))

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike]) -> PathList:
        """Any paths, kept whole (the root is ``.``: absolute paths stay absolute)."""
        if isinstance(paths, PathList):
            return paths
        return cls.from_names(".", (os.fspath(p) for p in paths))

    @classmethod
    def concat(cls, lists: Sequence[PathList]) -> PathList:
        """One list of all paths of ``lists`` in order (roots kept, each once)."""
        lists = [p if isinstance(p, PathList) else cls.from_paths(p) for p in lists if len(p)]
        if not lists:
            return cls.from_names(".", [])
        roots: list[Path] = []
        root_of: list[np.ndarray] = []
        for p in lists:
            number = []
            for r in p._roots:
                if r not in roots:
                    roots.append(r)
                number.append(roots.index(r))
            local = np.zeros(len(p), np.int32) if p._root_of is None else p._root_of
            root_of.append(np.asarray(number, dtype=np.int32)[local])
        data = np.concatenate([p._data for p in lists])
        starts = np.cumsum([0] + [len(p._data) for p in lists])
        offsets = np.concatenate(
            [np.zeros(1, np.int64)]
            + [p._offsets[1:] + s for p, s in zip(lists, starts[:-1], strict=True)]
        )
        if len(roots) == 1:
            return cls(roots, data, offsets)
        return cls(roots, data, offsets, np.concatenate(root_of))

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._offsets) - 1

    def name(self, i: int) -> str:
        """The ``i``-th path relative to its root."""
        return os.fsdecode(self._data[self._offsets[i] : self._offsets[i + 1]].tobytes())

    def _root(self, i: int) -> Path:
        return self._roots[0] if self._root_of is None else self._roots[self._root_of[i]]

    @overload
    def __getitem__(self, i: SupportsIndex) -> Path: ...

    @overload
    def __getitem__(self, i: slice) -> PathList: ...

    def __getitem__(self, i: SupportsIndex | slice) -> Path | PathList:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        k = operator.index(i)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"PathList index {operator.index(i)} out of range ({n} paths)")
        return self._root(k) / self.name(k)

    def __iter__(self) -> Iterator[Path]:
        step = 1 << 16  # paths decoded per block: no copy of the whole buffer
        for a in range(0, len(self), step):
            b = min(a + step, len(self))
            offsets = (self._offsets[a : b + 1] - self._offsets[a]).tolist()
            data = self._data[self._offsets[a] : self._offsets[b]].tobytes()
            roots = (
                [self._roots[0]] * (b - a)
                if self._root_of is None
                else [self._roots[r] for r in self._root_of[a:b].tolist()]
            )
            for k, root in enumerate(roots):
                yield root / os.fsdecode(data[offsets[k] : offsets[k + 1]])

    def take(self, rows: Sequence[int] | np.ndarray) -> PathList:
        """The paths at ``rows`` (any order, repeats allowed), in that order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"PathList.take: rows outside 0..{n - 1}")
        rows = np.where(rows < 0, rows + n, rows)
        starts = self._offsets[rows]
        lengths = self._offsets[rows + 1] - starts
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), dtype=np.uint8)
        step = 1 << 16  # rows per gather: its byte index stays a few MB
        for a in range(0, len(rows), step):
            b = min(a + step, len(rows))
            size = lengths[a:b]
            if not size.sum():
                continue
            index = np.repeat(starts[a:b] - offsets[a:b], size)
            index += np.arange(offsets[a], offsets[b])
            data[offsets[a] : offsets[b]] = self._data[index]
        root_of = None if self._root_of is None else self._root_of[rows]
        return PathList(self._roots, data, offsets, root_of)

    def nbytes(self) -> int:
        """Bytes held by the arrays (the roots aside)."""
        extra = 0 if self._root_of is None else self._root_of.nbytes
        return self._data.nbytes + self._offsets.nbytes + extra

    # -- comparing, pickling -------------------------------------------------------------
    def _same_layout(self, other: PathList) -> bool:
        return self._roots == other._roots and (
            (self._root_of is None and other._root_of is None)
            or (
                self._root_of is not None
                and other._root_of is not None
                and np.array_equal(self._root_of, other._root_of)
            )
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PathList):
            if len(self) != len(other):
                return False
            if self._same_layout(other):
                return np.array_equal(self._offsets, other._offsets) and np.array_equal(
                    self._data, other._data
                )
            return all(a == b for a, b in zip(self, other, strict=True))
        if isinstance(other, tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:  # the tuple's hash: equal to a tuple of the same paths
        return hash(tuple(self))

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str | os.PathLike):
            return False
        item = Path(item)
        return any(p == item for p in self)

    def __repr__(self) -> str:
        head = ", ".join(repr(p) for p in self[:2])
        more = ", ..." if len(self) > 2 else ""
        return f"PathList([{head}{more}], {len(self)} paths)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PathList, (self._roots, self._data, self._offsets, self._root_of))


@dataclass(frozen=True)
class FaceIndex:
    """The images of a face set and their identity labels.

    An ImageFolder has one path per image (a compact :class:`PathList`); a RecordIO set
    (``train.rec``) has no paths but the position of every image in its
    :class:`~faces.recordio.RecordIOFaces` (``records``).
    """

    root: Path
    paths: PathList | tuple[Path, ...]  # () for RecordIO and chunked sets
    labels: np.ndarray  # int64, index into ``identities``
    identities: tuple[str, ...]
    records: np.ndarray | None = None  # int64 RecordIOFaces positions; None: ImageFolder

    def __post_init__(self) -> None:
        if len(self.paths) and not isinstance(self.paths, PathList):
            object.__setattr__(self, "paths", PathList.from_paths(self.paths))

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: Sequence[int] | np.ndarray) -> FaceIndex:
        """The images at ``rows`` only; identities and labels are unchanged."""
        rows = np.asarray(rows, dtype=np.int64)
        return FaceIndex(
            root=self.root,
            paths=self.paths.take(rows) if isinstance(self.paths, PathList) else (),
            labels=self.labels[rows],
            identities=self.identities,
            records=None if self.records is None else self.records[rows],
        )

    def subset(self, identities: Sequence[str]) -> FaceIndex:
        """The images of the named identities only, relabelled 0..k-1."""
        position = {name: i for i, name in enumerate(self.identities)}
        missing = [name for name in identities if name not in position]
        if missing:
            raise ValueError(f"unknown identities: {missing[:5]}")
        lookup = np.full(len(self.identities), -1, dtype=np.int64)
        lookup[[position[name] for name in identities]] = np.arange(len(identities))
        new = lookup[self.labels] if len(self.labels) else self.labels
        rows = np.flatnonzero(new >= 0)
        return FaceIndex(
            root=self.root,
            paths=self.paths.take(rows) if isinstance(self.paths, PathList) else (),
            labels=new[rows].astype(np.int64),
            identities=tuple(identities),
            records=None if self.records is None else self.records[rows],
        )


def merge_indices(indices: Sequence[FaceIndex]) -> FaceIndex:
    """One index over several ImageFolders; people are named ``<folder>/<person>``."""
    identities: list[str] = []
    labels, paths = [], []
    for index in indices:
        if index.records is not None:
            raise ValueError(f"{index.root}: RecordIO sets cannot be merged with ImageFolders")
        labels.append(index.labels + len(identities))
        identities += [f"{index.root.name}/{name}" for name in index.identities]
        paths.append(index.paths)
    return FaceIndex(
        root=indices[0].root,
        paths=PathList.concat(paths),
        labels=np.concatenate(labels).astype(np.int64),
        identities=tuple(identities),
    )


# -- ImageFolder listing with a manifest cache ------------------------------------------------
# Data folders are read-only to facekd: manifests live in the cache folder (faces.cache) unless
# the user asks for them beside the data (``manifest="beside"``: ``root/.facekd/``).
MANIFEST_DIR = ".facekd"  # hidden: ignored as a person; its writes leave root's mtime alone
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
MANIFEST_PLACES = ("cache", "beside")
# A folder modified this close to (or after) the moment it was listed may still change within
# the same mtime tick (coarse timestamps): its stamp is not trusted and it is listed again.
RACY_NS = 2_000_000_000


def _user_manifest_path(root: Path) -> Path:
    """``<cache folder>/manifests/<sha256 of the resolved path>.json``."""
    return cache_path("manifests", root)


def _writable_dir(path: Path) -> bool:
    """Writable and not marked read-only (``chmod a-w`` is respected even for root)."""
    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)
    except OSError:
        return False


def _check_place(manifest: str) -> None:
    if manifest not in MANIFEST_PLACES:
        raise ValueError(f"manifest must be one of {MANIFEST_PLACES}, got {manifest!r}")


def manifest_path(root: str | os.PathLike, manifest: str = "cache") -> Path:
    """Where the manifest of ``root`` lives: in the cache folder (default), or with
    ``manifest="beside"`` in ``root/.facekd/manifest.json`` (the cache when root is read-only)."""
    _check_place(manifest)
    root = Path(root)
    folder = root / MANIFEST_DIR
    if manifest == "beside" and (
        _writable_dir(folder) or (_writable_dir(root) and not folder.exists())
    ):
        return folder / MANIFEST_NAME
    return _user_manifest_path(root)


def _list_person(person: Path) -> list[str]:
    with os.scandir(person) as it:
        return sorted(
            e.name
            for e in it
            if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file()
        )


def _list_people(root: Path) -> list[str]:
    with os.scandir(root) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        return None
    if not isinstance(data.get("people"), dict):
        return None
    return data


def _write_manifest(path: Path, data: dict[str, Any]) -> None:
    """Atomic write; a failure (read-only place, full disk) only costs the cache."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _trusted(mtime_ns: Any, listed_at_ns: Any) -> bool:
    return (
        isinstance(mtime_ns, int)
        and isinstance(listed_at_ns, int)
        and (mtime_ns < listed_at_ns - RACY_NS)
    )


def list_image_folder(
    root: str | os.PathLike, cache: bool = True, manifest: str = "cache"
) -> dict[str, list[str]]:
    """``{person: sorted image file names}`` of ``root/<person>/<image>``, all people.

    With ``cache`` the listing is kept in a manifest (:func:`manifest_path`: in the cache
    folder, or beside the data with ``manifest="beside"``) stamped with the
    mtime_ns of the root and of every person folder. A folder's mtime changes when a file in it
    is added, removed or renamed, so a later call only stats the folders and lists again
    just those whose stamp changed (or that were modified within ``RACY_NS`` of being listed).
    Edits of a file's content in place are not seen by the listing (nor meant to be).
    """
    _check_place(manifest)
    root = Path(root)
    if not cache:
        return {p: _list_person(root / p) for p in _list_people(root)}
    if manifest == "beside" and _writable_dir(root) and not (root / MANIFEST_DIR).exists():
        with contextlib.suppress(OSError):  # before the root stamp: creating it changes it
            (root / MANIFEST_DIR).mkdir()
    path = manifest_path(root, manifest)
    old = _read_manifest(path) or {"people": {}}
    old_people: dict[str, Any] = old["people"]
    listed_at = time.time_ns()
    root_mtime = root.stat().st_mtime_ns
    root_ok = root_mtime == old.get("root_mtime_ns") and _trusted(
        root_mtime, old.get("listed_at_ns")
    )
    names = sorted(old_people) if root_ok else _list_people(root)
    try:
        mtimes = {name: (root / name).stat().st_mtime_ns for name in names}
    except OSError:  # a person folder vanished behind an unchanged root stamp
        root_ok = False
        names = _list_people(root)
        mtimes = {name: (root / name).stat().st_mtime_ns for name in names}
    people: dict[str, Any] = {}
    changed = not root_ok
    for name in names:
        mtime = mtimes[name]
        entry = old_people.get(name)
        if (
            isinstance(entry, dict)
            and entry.get("mtime_ns") == mtime
            and _trusted(mtime, entry.get("listed_at_ns"))
            and isinstance(entry.get("files"), list)
        ):
            people[name] = entry
            continue
        files = _list_person(root / name)
        people[name] = {"mtime_ns": mtime, "listed_at_ns": listed_at, "files": files}
        changed = True
    if changed or not path.is_file():
        _write_manifest(
            path,
            {
                "version": MANIFEST_VERSION,
                "root": str(root.resolve()),
                "root_mtime_ns": root_mtime,
                "listed_at_ns": listed_at,
                "people": people,
            },
        )
    return {name: list(entry["files"]) for name, entry in people.items()}


def listing_fingerprint(
    root: str | os.PathLike, cache: bool = True, manifest: str = "cache"
) -> str:
    """A fingerprint of what ``scan_image_folder`` sees: people and file names (manifest).

    Cheap on big folders (no file is stat()ed when the manifest is valid), but blind to
    edits of a file's content in place; :func:`folder_fingerprint` sees those.
    """
    h = hashlib.sha256()
    for person, files in sorted(list_image_folder(root, cache, manifest).items()):
        for name in files:
            h.update(f"{person}/{name}\n".encode())
    return h.hexdigest()


def scan_image_folder(
    root: str | os.PathLike, min_images: int = 1, cache: bool = True, manifest: str = "cache"
) -> FaceIndex:
    """List ``root/<person>/<image>`` files; identities with fewer than ``min_images`` are dropped.

    With ``cache`` the listing comes from a manifest when it is still valid (see
    :func:`list_image_folder`; ``manifest``: where it is kept, ``cache`` or ``beside``).
    Raises FaceDataError naming the folder when it is missing, not a folder or holds no images.
    """
    root = Path(root)
    if not root.exists():
        raise FaceDataError(f"face data folder {root} does not exist")
    if not root.is_dir():
        raise FaceDataError(
            f"face data path {root} is not a folder (expected root/<person>/<image>)"
        )
    kept: list[tuple[str, list[str]]] = []
    labels: list[int] = []
    for person, files in sorted(list_image_folder(root, cache, manifest).items()):
        if len(files) < min_images:
            continue
        kept.append((person, files))
        labels.extend([len(kept) - 1] * len(files))
    if not labels:
        raise FaceDataError(
            f"face data folder {root} holds no identities with >= {min_images} images "
            "(expected root/<person>/<image>.jpg)"
        )
    identities = tuple(person for person, _ in kept)
    # one byte buffer of "person/image" names, not a Path object per image
    paths = PathList.from_names(root, (f"{p}/{f}" for p, files in kept for f in files))
    return FaceIndex(root, paths, np.array(labels, dtype=np.int64), identities)


def folder_fingerprint(root: str | os.PathLike) -> str:
    """A content fingerprint of a data folder: relative names, sizes and mtimes of all files.

    Stats every file (sees edits in place); the manifest folder is left out. For big
    ImageFolders :func:`listing_fingerprint` is the cheap alternative.
    """
    root = Path(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and MANIFEST_DIR in dirnames:
            dirnames.remove(MANIFEST_DIR)
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_image(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode one face image to uint8 (3, size, size) RGB; grey images are replicated."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise FaceDataError(f"cannot read image {path}: {exc}") from exc
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_image_bytes(data: bytes, size: int, where: str) -> np.ndarray:
    """Encoded image bytes to uint8 (3, size, size) RGB; ``where`` names it in errors."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FaceDataError(f"cannot decode {where}: {exc}") from exc
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def load_images(
    paths: Sequence[Path], size: int = IMAGE_SIZE, progress: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Decode many images into one uint8 tensor (N, 3, size, size)."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        out[i] = torch.from_numpy(load_image(p, size))
        if progress is not None:
            progress(i)
    return out


BAD_IMAGE_POLICIES = ("fail", "skip")


def decode_images(
    read: Callable[[int], np.ndarray | torch.Tensor],
    count: int,
    size: int = IMAGE_SIZE,
    bad_images: str = "fail",
) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Decode ``count`` images with ``read(i)``; returns (images, rows kept, skipped messages).

    ``bad_images="fail"`` raises the first :class:`FaceDataError` (it names the file);
    ``"skip"`` leaves unreadable images out and reports each one. Raises when nothing is left.
    """
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
    out = torch.empty((count, 3, size, size), dtype=torch.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    for i in range(count):
        try:
            image = read(i)
        except FaceDataError as exc:
            if bad_images == "fail":
                raise
            skipped.append(str(exc))
            continue
        out[len(kept)] = torch.as_tensor(image)
        kept.append(i)
    if count and not kept:
        raise FaceDataError(f"none of the {count} images could be read; first: {skipped[0]}")
    return out[: len(kept)], np.array(kept, dtype=np.int64), skipped


class FaceImages(Dataset):
    """Images of a FaceIndex as (uint8 image, label); decoded once and kept in memory.

    ``images`` (uint8 (N, 3, size, size), in index order) skips decoding the index's paths:
    RecordIO sets are decoded by their reader.
    """

    def __init__(
        self, index: FaceIndex, size: int = IMAGE_SIZE, images: torch.Tensor | None = None
    ) -> None:
        self.index = index
        if images is not None and len(images) != len(index):
            raise ValueError(f"{len(images)} images for an index of {len(index)}")
        self.images = load_images(index.paths, size) if images is None else images
        self.labels = torch.from_numpy(index.labels)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def split_identities(
    index: FaceIndex, eval_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split people (not images) into train and evaluation identities with a fixed seed."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(index.identities))
    n_eval = max(2, int(round(len(order) * eval_fraction)))
    if n_eval >= len(order):
        raise FaceDataError(
            f"{index.root}: too few identities ({len(order)}) to split off evaluation people"
        )
    eval_ids = sorted(index.identities[i] for i in order[:n_eval])
    train_ids = sorted(index.identities[i] for i in order[n_eval:])
    return train_ids, eval_ids


def make_pairs(labels: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """Balanced genuine/impostor pairs (i, j, same) drawn with a fixed seed, no duplicates.

    Genuine and impostor pairs alternate in blocks so that every fold of the 10-fold protocol
    holds both kinds. Raises FaceDataError when no identity has two images.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_id: dict[int, np.ndarray] = {int(k): np.flatnonzero(labels == k) for k in np.unique(labels)}
    multi = [k for k, v in by_id.items() if len(v) >= 2]
    if not multi:
        raise FaceDataError("no identity has two images: genuine pairs cannot be made")
    if len(by_id) < 2:
        raise FaceDataError("only one identity: impostor pairs cannot be made")
    n_gen = n_pairs // 2
    max_gen = sum(len(v) * (len(v) - 1) // 2 for k, v in by_id.items() if k in multi)
    sizes = np.array([len(v) for v in by_id.values()], dtype=np.int64)
    max_imp = int((sizes.sum() ** 2 - (sizes**2).sum()) // 2)  # pairs across identities
    n_gen = min(n_gen, max_gen, max_imp)  # else the impostor loop below never ends
    seen: set[tuple[int, int]] = set()
    genuine: list[tuple[int, int, int]] = []
    while len(genuine) < n_gen:
        k = multi[rng.integers(len(multi))]
        i, j = rng.choice(by_id[k], size=2, replace=False)
        key = (min(i, j), max(i, j))
        if key not in seen:
            seen.add(key)
            genuine.append((int(key[0]), int(key[1]), 1))
    impostor: list[tuple[int, int, int]] = []
    ids = list(by_id)
    while len(impostor) < n_gen:
        a, b = rng.choice(len(ids), size=2, replace=False)
        i = int(rng.choice(by_id[ids[a]]))
        j = int(rng.choice(by_id[ids[b]]))
        key = (min(i, j), max(i, j))
        if key not in seen:
            seen.add(key)
            impostor.append((key[0], key[1], 0))
    pairs = []
    for g, m in zip(genuine, impostor, strict=True):
        pairs.extend([g, m])
    return np.array(pairs, dtype=np.int64).reshape(-1, 3)
