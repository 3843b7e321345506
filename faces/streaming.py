"""Training faces read on demand: image sources, the training dataset and its epoch sampler.

Nothing here decodes a whole set into memory (:class:`TensorSource` serves a set that was,
when it fits the budget). Decoding, mirroring and augmentation run in the ``__getitem__`` of
:class:`TrainingFaces`, i.e. in DataLoader worker processes; every random draw of a sample
comes from a generator seeded by (seed, epoch, index), so a run gives the same batches
whatever the number of workers, and a run resumed in the middle of an epoch continues with
exactly the batches it would have seen (:class:`EpochSampler` skips the ones done).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from faces.data import FaceDataError, load_image
from faces.transforms import IMAGE_SIZE, augment_one

# A skipped unreadable image is replaced by the next readable one (bad_images: skip); a run
# of this many unreadable neighbours stops the run instead.
MAX_SUBSTITUTES = 64


class ImageSource(ABC):
    """Random access to uint8 (3, size, size) RGB faces; ``key(i)`` names image ``i``."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, i: int) -> torch.Tensor:
        """Decode image ``i``; raises :class:`FaceDataError` naming it when it cannot."""

    @abstractmethod
    def key(self, i: int) -> str:
        """The file path or record key of image ``i`` (for errors and skip lists)."""


class TensorSource(ImageSource):
    """Images already decoded into one uint8 tensor (N, 3, H, W) (small sets, tests)."""

    def __init__(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> None:
        self.images = images
        self._keys = keys

    def __len__(self) -> int:
        return len(self.images)

    def read(self, i: int) -> torch.Tensor:
        return self.images[i]

    def key(self, i: int) -> str:
        return self._keys[i] if self._keys is not None else f"image {i}"


class FolderSource(ImageSource):
    """Image files (an ImageFolder's manifest listing), decoded on each read.

    Paths are kept as one numpy bytes array, not a list of Python objects: forked workers
    then share its pages instead of copying them as reference counts change."""

    def __init__(self, paths: Sequence[str | os.PathLike], size: int = IMAGE_SIZE) -> None:
        self.paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, i: int) -> str:
        return os.fsdecode(self.paths[i])

    def read(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_image(Path(self.key(i)), self.size))


class RecordIOSource(ImageSource):
    """Records of an InsightFace RecordIO set, read one by one through its index."""

    def __init__(self, root: str | os.PathLike, records: np.ndarray, size: int = IMAGE_SIZE):
        from faces.recordio import RecordIOFaces

        self.reader = RecordIOFaces(root, size)
        self.records = np.asarray(records, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def key(self, i: int) -> str:
        record = int(self.records[i])
        return f"{self.reader.rec_path} record {int(self.reader.keys[record])}"

    def read(self, i: int) -> torch.Tensor:
        return self.reader[int(self.records[i])][0]


class ConcatSource(ImageSource):
    """Several sources one after the other (labelled faces, then unlabelled folders)."""

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self.sources = list(sources)
        self.ends = np.cumsum([len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def _locate(self, i: int) -> tuple[ImageSource, int]:
        k = int(np.searchsorted(self.ends, i, side="right"))
        start = int(self.ends[k - 1]) if k else 0
        return self.sources[k], i - start

    def read(self, i: int) -> torch.Tensor:
        source, j = self._locate(i)
        return source.read(j)

    def key(self, i: int) -> str:
        source, j = self._locate(i)
        return source.key(j)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the draws of one sample in one epoch (splitmix64 of the three)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) >> 1


class TrainingFaces(Dataset):
    """Training samples ``(image uint8 (3, H, W), index, label, mirrored)`` read on demand.

    Items are requested as ``(epoch, index)`` (see :class:`EpochSampler`) or a plain index
    (epoch 0). Each image is mirrored with probability 1/2 (the flag tells which of the
    teacher's cached views is its target) and, with ``augment="sample"``, shifted and
    colour-jittered here (worker processes); with ``augment="batch"`` that part is left to
    the training step (a GPU batch, :func:`faces.transforms.augment`); ``"none"`` returns the
    image as stored, never mirrored. Labels of -1 mark unlabelled faces.

    ``bad_images="skip"``: an unreadable image is reported (its path or record key) and the
    next readable one takes its place, so batches keep their size; ``"fail"`` raises the
    :class:`FaceDataError` that names it.
    """

    def __init__(
        self,
        source: ImageSource,
        labels: np.ndarray | torch.Tensor,
        seed: int = 0,
        augment: str = "sample",
        bad_images: str = "fail",
    ) -> None:
        if augment not in ("sample", "batch", "none"):
            raise ValueError(f"augment must be sample, batch or none, got {augment!r}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(source):
            raise ValueError(f"{len(labels)} labels for {len(source)} images")
        self.source, self.labels = source, torch.from_numpy(labels)
        self.seed, self.augment, self.bad_images = seed, augment, bad_images
        self.progress: torch.Tensor | None = None  # shared: the index each worker reads
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    @property
    def in_memory(self) -> bool:
        """Whether every image is already decoded (no source reads a file)."""

        def decoded(source: ImageSource) -> bool:
            if isinstance(source, ConcatSource):
                return all(decoded(s) for s in source.sources)
            return isinstance(source, TensorSource)

        return decoded(self.source)

    def track_progress(self, workers: int) -> None:
        """Let each worker note the image it reads in shared memory (names a dead worker's)."""
        self.progress = torch.full((max(1, workers),), -1, dtype=torch.int64).share_memory_()

    def _read(self, i: int) -> torch.Tensor:
        n = len(self.source)
        info = torch.utils.data.get_worker_info()
        for step in range(MAX_SUBSTITUTES + 1):
            j = (i + step) % n
            if self.progress is not None:
                self.progress[info.id if info is not None else 0] = j
            try:
                image = self.source.read(j)
                if self.progress is not None:
                    self.progress[info.id if info is not None else 0] = -1
                return image
            except FaceDataError as exc:
                if self.bad_images == "fail":
                    raise
                if j not in self._reported:
                    self._reported.add(j)
                    # standard output: standard error goes to the run's log (pipelines.core.logs)
                    print(f"warning: skipped: {exc}", flush=True)
        raise FaceDataError(
            f"{MAX_SUBSTITUTES + 1} unreadable images in a row from {self.source.key(i)} on "
            "(data.bad_images: skip); the set looks broken"
        )

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, Any, bool]:
        epoch, i = item if isinstance(item, tuple) else (0, item)
        image = self._read(int(i))
        if self.augment == "none":
            return image, int(i), self.labels[i], False
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, int(i)))
        mirrored = bool(torch.rand(1, generator=g) < 0.5)
        if mirrored:
            image = image.flip(-1)
        if self.augment == "sample":
            image = augment_one(image, g, flip=False)
        return image, int(i), self.labels[i], mirrored


def world() -> tuple[int, int]:
    """(rank, world size) of the running distributed job; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled ``(epoch, index)`` items, one shard per distributed rank, resumable mid-epoch.

    Every rank computes the same epoch order (seeded by ``seed`` and the epoch) and takes
    every ``world``-th item from its rank on, all shards of equal length: no image is seen
    twice per epoch across ranks. With ``n_labelled`` and ``labelled_share`` the order holds
    that share of labelled rows (the first ``n_labelled``; :class:`faces.sampling.
    LabelledShareSampler`). :meth:`resume_at` makes the next iteration start after the
    batches a checkpoint had already trained on; ``len`` stays the whole epoch's.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        n_labelled: int | None = None,
        labelled_share: float | None = None,
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.n_labelled, self.labelled_share = n_labelled, labelled_share
        self.epoch = 0
        self._skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip_batches = 0  # a resume position belongs to its own epoch only
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start the next iteration at ``epoch`` after ``batches_done`` batches of this rank."""
        self.epoch, self._skip_batches = epoch, batches_done

    def order(self, epoch: int) -> torch.Tensor:
        """All ``n`` positions in the order of ``epoch`` (the same on every rank)."""
        if self.labelled_share is not None and self.n_labelled is not None:
            from faces.sampling import LabelledShareSampler

            s = LabelledShareSampler(self.n_labelled, self.n, self.labelled_share, self.seed)
            s.set_epoch(epoch)
            return torch.tensor(list(iter(s)), dtype=torch.int64)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def shard(self, epoch: int) -> torch.Tensor:
        rank, size = world()
        per_rank = self.n // size
        return self.order(epoch)[rank::size][:per_rank]

    def __len__(self) -> int:
        return self.n // world()[1]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self._skip_batches * self.batch_size
        self._skip_batches = 0
        shard = self.shard(epoch)[skip:]
        for start in range(0, len(shard), 65536):  # no Python int per image of the epoch
            for i in shard[start : start + 65536].tolist():
                yield epoch, i


def worker_init(worker_id: int) -> None:
    """One thread per loader worker: the workers and the training process share the CPUs."""
    torch.set_num_threads(1)


class FilledSource(ImageSource):
    """Another source's images with the black frame of tight crops filled (UTKFace)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def key(self, i: int) -> str:
        return self.source.key(i)

    def read(self, i: int) -> torch.Tensor:
        from faces.transforms import fill_black_border

        return fill_black_border(self.source.read(i)[None])[0]
