"""Aligned face data in ImageFolder layout (``root/<person>/<image>``) and verification pairs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from faces.transforms import IMAGE_SIZE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp"}


class FaceDataError(ValueError):
    """Bad face data: the message names the file or folder and what is wrong."""


@dataclass(frozen=True)
class FaceIndex:
    """The files of an ImageFolder and their identity labels."""

    root: Path
    paths: tuple[Path, ...]
    labels: np.ndarray  # int64, index into ``identities``
    identities: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, identities: Sequence[str]) -> FaceIndex:
        """The images of the named identities only, relabelled 0..k-1."""
        keep = [self.identities.index(name) for name in identities]
        remap = {old: new for new, old in enumerate(keep)}
        rows = [i for i, lab in enumerate(self.labels) if int(lab) in remap]
        return FaceIndex(
            root=self.root,
            paths=tuple(self.paths[i] for i in rows),
            labels=np.array([remap[int(self.labels[i])] for i in rows], dtype=np.int64),
            identities=tuple(identities),
        )


def scan_image_folder(root: str | os.PathLike, min_images: int = 1) -> FaceIndex:
    """List ``root/<person>/<image>`` files; identities with fewer than ``min_images`` are dropped.

    Raises FaceDataError naming the folder when it is missing, not a folder or holds no images.
    """
    root = Path(root)
    if not root.exists():
        raise FaceDataError(f"face data folder {root} does not exist")
    if not root.is_dir():
        raise FaceDataError(
            f"face data path {root} is not a folder (expected root/<person>/<image>)"
        )
    paths: list[Path] = []
    labels: list[int] = []
    identities: list[str] = []
    for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            f for f in person.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if len(files) < min_images:
            continue
        identities.append(person.name)
        paths.extend(files)
        labels.extend([len(identities) - 1] * len(files))
    if not paths:
        raise FaceDataError(
            f"face data folder {root} holds no identities with >= {min_images} images "
            "(expected root/<person>/<image>.jpg)"
        )
    return FaceIndex(root, tuple(paths), np.array(labels, dtype=np.int64), tuple(identities))


def folder_fingerprint(root: str | os.PathLike) -> str:
    """A cheap content fingerprint of a data folder: relative names, sizes and mtimes."""
    root = Path(root)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
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


class FaceImages(Dataset):
    """Images of a FaceIndex as (uint8 image, label); decoded once and kept in memory."""

    def __init__(self, index: FaceIndex, size: int = IMAGE_SIZE) -> None:
        self.index = index
        self.images = load_images(index.paths, size)
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
