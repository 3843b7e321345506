"""Release bundles of a student: its files, ``SHA256SUMS``, and checked loading.

A bundle is a folder ``<name>/<version>/`` holding the LCE ``.tflite``, its float twin, the
ONNX graph, ``model_card.md``, ``metrics.json`` and ``SHA256SUMS`` (``sha256sum`` format).
:func:`load_bundle` refuses a bundle whose files do not match their checksums.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from faces.transforms import IMAGE_SIZE

SUMS = "SHA256SUMS"
MODEL_FILES = ("student_lce.tflite", "student_float.tflite", "student.onnx")


class BundleError(ValueError):
    """A release bundle is incomplete or its files do not match ``SHA256SUMS``."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_sums(folder: Path) -> Path:
    """``SHA256SUMS`` of every other file of ``folder`` (sorted, ``sha256sum -c`` compatible)."""
    lines = [
        f"{sha256_bytes(p.read_bytes())}  {p.name}\n"
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != SUMS
    ]
    path = folder / SUMS
    path.write_text("".join(lines))
    return path


def verify_sums(folder: Path) -> dict[str, str]:
    """Check every file listed in ``SHA256SUMS``; returns name -> sha256. Raises BundleError."""
    sums = folder / SUMS
    if not sums.is_file():
        raise BundleError(f"{folder} is not a release bundle: {SUMS} is missing")
    listed: dict[str, str] = {}
    for n, line in enumerate(sums.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or "/" in name:
            raise BundleError(f"{sums}:{n}: not a '<sha256>  <file>' line: {line!r}")
        listed[name] = digest
    for name in MODEL_FILES:
        if name not in listed:
            raise BundleError(f"{sums} does not list {name}")
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{path} is listed in {SUMS} but missing")
        actual = sha256_bytes(path.read_bytes())
        if actual != digest:
            raise BundleError(
                f"{path} does not match {SUMS} (sha256 {actual[:16]}..., expected "
                f"{digest[:16]}...): the bundle was modified or damaged; refusing to load it"
            )
    return listed


def images_to_input(images: np.ndarray) -> np.ndarray:
    """Aligned uint8 RGB faces (N, 112, 112, 3) -> the students' normalised (N, 3, 112, 112)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(
            f"expected aligned RGB faces of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), "
            f"got {images.shape}"
        )
    x = (images.astype(np.float32) - 127.5) / 128.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass
class Bundle:
    """A verified release bundle; ``embed`` runs its LCE model."""

    folder: Path
    checksums: dict[str, str]

    @property
    def lce_tflite(self) -> Path:
        return self.folder / "student_lce.tflite"

    def embed(self, images: np.ndarray, threads: int = 1) -> np.ndarray:
        """Raw (not normalised) embeddings of aligned uint8 RGB faces (N, 112, 112, 3)."""
        from export.runtime import TFLiteRunner

        runner = TFLiteRunner(self.lce_tflite.read_bytes(), threads=threads, binary=True)
        return runner.embed(images_to_input(images))


def load_bundle(folder: str | os.PathLike) -> Bundle:
    """Open a release bundle after checking every file against ``SHA256SUMS``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"release bundle {folder} does not exist")
    return Bundle(folder, verify_sums(folder))
