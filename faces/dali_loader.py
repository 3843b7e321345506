"""RecordIO training batches from NVIDIA DALI (``data.loader: dali``), JPEGs decoded on the GPU.

The path arcface_torch offers for MS1M-scale training: DALI's MXNet RecordIO reader shards
and shuffles the records, its ``mixed`` decoder decodes the JPEGs on the GPU (nvJPEG), and the
batch is mirrored there; shifts and colour jitter then run on the whole batch on the GPU in
the training step (``faces.transforms.augment``). Without a GPU the same pipeline runs on the
CPU (``device="cpu"``: tests, and a check of what it reads).

DALI reads every record its index lists, and an InsightFace ``train.idx`` also lists the
header and identity records; so the loader writes an index of exactly the training images
(after the held-out split and ``min_images_per_identity``) into facekd's cache folder, never
beside the data. DALI gives no image positions: distillation with cached teacher targets
needs them (use ``distill.teacher_targets: online``). A resumed run restarts the epoch it was
in (DALI's reader position is not restored).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faces.data import FaceDataError
from faces.transforms import IMAGE_SIZE


def dali_available() -> bool:
    """Whether NVIDIA DALI (``nvidia-dali-cuda130``, the ``gpu`` extra) can be imported."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def image_index(rec_idx: Path, keys: np.ndarray, folder: Path) -> Path:
    """An index listing only the records ``keys`` (in that order), written under ``folder``.

    Named by the source index's path, size and time and by the keys, so a changed set or
    split gets its own file."""
    from faces.recordio import read_index

    st = rec_idx.stat()
    h = hashlib.sha256(f"{rec_idx.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    h.update(np.ascontiguousarray(keys, dtype=np.int64).tobytes())
    path = folder / f"{h.hexdigest()[:24]}.idx"
    if path.is_file():
        return path
    all_keys, offsets = read_index(rec_idx)
    order = np.argsort(all_keys, kind="stable")
    pos = np.searchsorted(all_keys[order], keys)
    found = (pos < len(order)) & (all_keys[order][np.minimum(pos, len(order) - 1)] == keys)
    if not found.all():
        missing = int(np.asarray(keys)[~found][0])
        raise FaceDataError(f"RecordIO index {rec_idx} has no record {missing}")
    chosen = offsets[order][pos]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.writelines(f"{int(k)}\t{int(o)}\n" for k, o in zip(keys, chosen, strict=True))
    os.replace(tmp, path)
    return path


class DaliFaces:
    """Batches ``(images uint8 (B, 3, H, W), index (-1), label, mirrored)`` from DALI.

    ``keys``: the RecordIO keys of the training images; ``labels``: their training labels
    (the header labels are mapped to them on the batch's device). Each distributed rank reads
    its own shard (``shard_id`` / ``num_shards`` from the running process group), reshuffled
    every epoch; the pipeline is built on first iteration, after the process group exists.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        keys: np.ndarray,
        labels: np.ndarray,
        raw_labels: np.ndarray,
        batch_size: int,
        index_folder: Path,
        seed: int = 0,
        device: str | None = None,
        threads: int = 2,
        size: int = IMAGE_SIZE,
    ) -> None:
        if not dali_available():
            raise FaceDataError(
                "data.loader: dali needs NVIDIA DALI: pip install 'facekd[gpu]' "
                "(nvidia-dali-cuda130)"
            )
        self.root, self.keys = Path(root), np.asarray(keys, dtype=np.int64)
        self.batch_size, self.seed, self.threads, self.size = batch_size, seed, threads, size
        self.device = device or ("gpu" if torch.cuda.is_available() else "cpu")
        self.index = image_index(self.root / "train.idx", self.keys, index_folder)
        raw = np.asarray(raw_labels, dtype=np.int64)
        lookup = np.full(int(raw.max()) + 1 if len(raw) else 1, -1, dtype=np.int64)
        lookup[raw] = np.asarray(labels, dtype=np.int64)
        self.lookup = torch.from_numpy(lookup)
        self._iterator: Any = None

    def __len__(self) -> int:
        from faces.streaming import world

        return len(self.keys) // world()[1] // self.batch_size

    def _build(self) -> Any:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        from faces.streaming import world

        rank, size = world()
        gpu = self.device == "gpu"

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.threads,
            device_id=torch.cuda.current_device() if gpu else None,
            seed=self.seed * 1_000_003 + rank,
        )
        def faces() -> Any:
            jpegs, labels = fn.readers.mxnet(
                path=[str(self.root / "train.rec")],
                index_path=[str(self.index)],
                random_shuffle=True,
                shard_id=rank,
                num_shards=size,
                name="reader",
            )
            images = fn.decoders.image(
                jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB
            )
            images = fn.resize(images, resize_x=self.size, resize_y=self.size)  # other crops
            mirror = fn.random.coin_flip(probability=0.5)
            images = fn.flip(images, horizontal=mirror)
            images = fn.transpose(images, perm=[2, 0, 1])
            return images, labels, mirror

        pipe = faces()
        pipe.build()
        return DALIGenericIterator(
            [pipe],
            ["images", "labels", "mirror"],
            reader_name="reader",
            last_batch_policy=LastBatchPolicy.DROP,
            auto_reset=True,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._iterator is None:
            self._iterator = self._build()
        for out in self._iterator:
            batch = out[0]
            images = batch["images"]
            raw = batch["labels"].reshape(-1).long()
            labels = self.lookup.to(raw.device)[raw]
            mirror = batch["mirror"].reshape(-1).bool()
            index = torch.full_like(labels, -1)
            yield images, index, labels, mirror
