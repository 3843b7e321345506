"""Chunked streaming training sets (Lightning's ``litdata``) for object storage and many nodes.

``facekd pack SRC DST`` (:func:`pack`) converts an ImageFolder or an InsightFace RecordIO set
into litdata chunks (``litdata.optimize``: ``index.json`` and ``chunk-*.bin`` files of about
``chunk_bytes`` each, the encoded JPEG/PNG bytes and the label of every face) plus
``facekd.json`` (the people's names) and ``labels.npy`` (every face's label, so a run knows its
people without reading a chunk). Training reads faces by index through
``litdata.StreamingDataset`` (:class:`ChunkSource`), opened once per process.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faces.data import FaceDataError, FaceIndex, decode_image_bytes
from faces.streaming import ImageSource
from faces.transforms import IMAGE_SIZE

META = "facekd.json"
LABELS = "labels.npy"


def is_chunked(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a set written by :func:`pack` (litdata index + facekd labels)."""
    p = Path(path)
    return (p / "index.json").is_file() and (p / META).is_file() and (p / LABELS).is_file()


def _item(root: str, recordio: bool, paths: list[str], i: int) -> dict[str, Any]:
    """Face ``i`` of a source set (a module function: litdata's workers call it)."""
    if recordio:
        reader = _recordio_reader(root)
        _, data = reader._unpack(int(reader.keys[i]))
        return {"index": i, "image": bytes(data)}
    return {"index": i, "image": Path(paths[i]).read_bytes()}


_readers: dict[str, Any] = {}


def _recordio_reader(root: str) -> Any:
    from faces.recordio import RecordIOFaces

    if root not in _readers:
        _readers[root] = RecordIOFaces(root)
    return _readers[root]


def pack(
    src: str | os.PathLike, dst: str | os.PathLike, chunk_bytes: str = "64MB", workers: int = 1
) -> int:
    """Write the faces of ``src`` (ImageFolder or RecordIO folder) as a chunked set in ``dst``.

    Returns the number of faces. ``dst`` must not hold another set (litdata would mix them).
    """
    import litdata

    from faces.data import scan_image_folder
    from faces.recordio import RecordIOFaces

    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FaceDataError(f"pack: {dst} exists and is not empty; choose a new folder")
    if (src / "train.rec").is_file():
        reader = RecordIOFaces(src)
        classes, labels = np.unique(reader.labels, return_inverse=True)
        identities = [str(int(c)) for c in classes]
        items = partial(_item, str(src.resolve()), True, [])
    else:
        index = scan_image_folder(src, cache=False)
        labels, identities = index.labels, list(index.identities)
        items = partial(_item, str(src.resolve()), False, [str(p) for p in index.paths])
    dst.mkdir(parents=True, exist_ok=True)
    litdata.optimize(
        fn=items,
        inputs=list(range(len(labels))),
        output_dir=str(dst.resolve()),
        chunk_bytes=chunk_bytes,
        num_workers=workers,
        mode="overwrite",
    )
    np.save(dst / LABELS, np.asarray(labels, dtype=np.int64).reshape(-1))
    meta = {"format": "facekd-chunks-1", "source": str(src.resolve()), "identities": identities}
    (dst / META).write_text(json.dumps(meta))
    return len(labels)


def chunk_index(root: str | os.PathLike) -> FaceIndex:
    """A FaceIndex of a chunked set: its people, every face's label, ``records`` positions."""
    root = Path(root)
    try:
        meta = json.loads((root / META).read_text())
        labels = np.load(root / LABELS)
    except (OSError, ValueError) as exc:
        raise FaceDataError(f"chunked set {root}: cannot read {META} / {LABELS}: {exc}") from exc
    identities = tuple(str(name) for name in meta.get("identities", []))
    if len(labels) and (labels.min() < 0 or labels.max() >= len(identities)):
        raise FaceDataError(f"chunked set {root}: {LABELS} names people {META} does not list")
    return FaceIndex(
        root=root,
        paths=(),
        labels=labels.astype(np.int64),
        identities=identities,
        records=np.arange(len(labels), dtype=np.int64),
    )


class ChunkSource(ImageSource):
    """Faces of a chunked set by position, through ``litdata.StreamingDataset``."""

    def __init__(self, root: str | os.PathLike, records: np.ndarray, size: int = IMAGE_SIZE):
        self.root, self.size = Path(root), size
        self.records = np.asarray(records, dtype=np.int64)
        self._dataset: Any = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None, "_pid": None}

    def _open(self) -> Any:
        if self._dataset is None or self._pid != os.getpid():
            import litdata

            self._dataset = litdata.StreamingDataset(str(self.root.resolve()))
            self._pid = os.getpid()
        return self._dataset

    def __len__(self) -> int:
        return len(self.records)

    def key(self, i: int) -> str:
        return f"{self.root} face {int(self.records[i])}"

    def read(self, i: int) -> torch.Tensor:
        try:
            item = self._open()[int(self.records[i])]
        except (OSError, ValueError, RuntimeError, IndexError) as exc:
            raise FaceDataError(f"cannot read {self.key(i)}: {type(exc).__name__}: {exc}") from exc
        return torch.from_numpy(decode_image_bytes(item["image"], self.size, self.key(i)))
