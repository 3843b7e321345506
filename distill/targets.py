"""The teacher's distillation targets on disk: an fp16 memory map, one row per training image.

Row ``i`` holds the teacher's embedding of training image ``i`` and of its mirror image
((N, 2, D) float16; MS1M-V3: 5.2 M x 2 x 512 x 2 B = 10.6 GB). It is computed in one
streaming, batched pass (worker processes decode, the teacher runs on the GPU when there is
one), flushed chunk by chunk with the count of finished rows in ``targets.json``, so a pass
killed halfway continues where it stopped. The map is keyed by what it was made from (the
teacher's weights, the images' identity, their count, the embedding size): a map made for
another teacher or data set is refused and rebuilt. Training reads the rows of each batch.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from faces.transforms import normalise

META = "targets.json"
ROWS = "targets.f16"
LOCK = ".targets.lock"
FORMAT_VERSION = 1


class TargetMap:
    """An open target map: ``map[index, mirrored]`` -> float32 (B, D) tensor."""

    def __init__(self, folder: Path, n: int, dim: int) -> None:
        self.folder, self.n, self.dim = folder, n, dim
        self.array = np.memmap(folder / ROWS, dtype=np.float16, mode="r", shape=(n, 2, dim))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: tuple[Any, Any]) -> torch.Tensor:
        index, mirrored = item
        index = np.asarray(torch.as_tensor(index).cpu(), dtype=np.int64)
        view = np.asarray(torch.as_tensor(mirrored).cpu(), dtype=np.int64)
        return torch.from_numpy(np.asarray(self.array[index, view], dtype=np.float32))

    def __getstate__(self) -> dict[str, Any]:  # reopened, not pickled, in other processes
        return {"folder": self.folder, "n": self.n, "dim": self.dim}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["n"], state["dim"])

    def sample(self, count: int, seed: int = 0, limit: int | None = None) -> torch.Tensor:
        """``count`` of the first ``limit`` rows drawn without replacement, both views,
        float32 (count, 2, D): SEED's bank when the whole map would not fit in memory."""
        limit = self.n if limit is None else min(limit, self.n)
        count = min(count, limit)
        rows = np.sort(np.random.default_rng(seed).choice(limit, size=count, replace=False))
        return torch.from_numpy(np.asarray(self.array[rows], dtype=np.float32))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` with both views, float32 (k, 2, D)."""
        return torch.from_numpy(np.asarray(self.array[start:stop], dtype=np.float32))


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    tmp = folder / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / META)


def build_target_map(
    folder: Path,
    key: str,
    teacher: nn.Module,
    images: Dataset,
    dim: int,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    chunk_seconds: float = 30.0,
    log: Callable[[str], None] | None = None,
) -> TargetMap:
    """The target map of ``images`` (a dataset of uint8 (3, H, W) first items) in ``folder``.

    Reuses a finished map with the same ``key``, continues an unfinished one, and refuses
    (prints why, then rebuilds) one with another key or shape. The finished-row count is
    saved every ``chunk_seconds``: a killed pass loses at most that much work.
    """
    log = log or (lambda m: print(m, flush=True))  # standard error goes to the run's log
    folder.mkdir(parents=True, exist_ok=True)
    # Two runs sharing a stage cache (ablation variants started together) would both fill
    # the same map; the second waits for the first and then finds it finished.
    with open(folder / LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building the distillation targets in {folder}")
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
        return _build_locked(
            folder, key, teacher, images, dim, batch_size, num_workers, device, chunk_seconds, log
        )


def _build_locked(
    folder: Path,
    key: str,
    teacher: nn.Module,
    images: Dataset,
    dim: int,
    batch_size: int,
    num_workers: int,
    device: str | torch.device | None,
    chunk_seconds: float,
    log: Callable[[str], None],
) -> TargetMap:
    n = len(images)
    shape = [n, 2, dim]
    meta = _read_meta(folder)
    rows_file = folder / ROWS
    fresh = {"version": FORMAT_VERSION, "key": key, "shape": shape, "done": 0}
    if meta is not None and (meta.get("key") != key or meta.get("shape") != shape):
        log(
            f"note: distillation targets in {folder} were made for another teacher or data set "
            f"({meta.get('shape')} rows, key {str(meta.get('key'))[:12]}); rebuilding them"
        )
        meta = None
    if meta is None or meta.get("version") != FORMAT_VERSION or not rows_file.is_file():
        rows_file.unlink(missing_ok=True)
        with open(rows_file, "wb") as f:
            f.truncate(n * 2 * dim * 2)
        meta = dict(fresh)
        _write_meta(folder, meta)
    elif rows_file.stat().st_size != n * 2 * dim * 2:
        log(f"note: {rows_file} has the wrong size; rebuilding the distillation targets")
        with open(rows_file, "wb") as f:
            f.truncate(n * 2 * dim * 2)
        meta = dict(fresh)
        _write_meta(folder, meta)
    done = int(meta["done"])
    if done < n:
        if done:
            log(f"continuing the teacher's distillation targets at image {done} of {n}")
        _fill(folder, meta, teacher, images, dim, batch_size, num_workers, device, chunk_seconds)
    return TargetMap(folder, n, dim)


def wait_for_target_map(
    folder: Path, key: str, n: int, dim: int, timeout_s: float = 24 * 3600
) -> TargetMap:
    """The map that another process (rank 0 of a distributed run) is building: waits until
    it is complete for ``key``."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = _read_meta(folder)
        if meta and meta.get("key") == key and meta.get("done") == n:
            return TargetMap(folder, n, dim)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the distillation targets in {folder} were not finished")
        time.sleep(2.0)


class _From(Dataset):
    """The first items of ``images`` from position ``start`` on."""

    def __init__(self, images: Dataset, start: int) -> None:
        self.images, self.start = images, start

    def __len__(self) -> int:
        return len(self.images) - self.start

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[self.start + i][0]


@torch.no_grad()
def _fill(
    folder: Path,
    meta: dict[str, Any],
    teacher: nn.Module,
    images: Dataset,
    dim: int,
    batch_size: int,
    num_workers: int,
    device: str | torch.device | None,
    chunk_seconds: float,
) -> None:
    from faces.streaming import worker_init

    n = len(images)
    done = int(meta["done"])
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    home = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval().to(device)
    array = np.memmap(folder / ROWS, dtype=np.float16, mode="r+", shape=(n, 2, dim))
    loader = DataLoader(
        _From(images, done),
        batch_size=batch_size,
        num_workers=num_workers,
        worker_init_fn=worker_init,
        pin_memory=torch.device(device).type == "cuda",
    )
    last_save = time.monotonic()
    try:
        for batch in loader:
            x = normalise(batch).to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            pair = torch.stack([teacher(x), teacher(x.flip(-1))], dim=1)
            if pair.shape[-1] != dim:
                raise ValueError(f"the teacher gives {pair.shape[-1]}-d embeddings, not {dim}")
            array[done : done + len(batch)] = pair.float().cpu().numpy().astype(np.float16)
            done += len(batch)
            if time.monotonic() - last_save > chunk_seconds or done == n:
                array.flush()
                meta["done"] = done
                _write_meta(folder, meta)
                last_save = time.monotonic()
    finally:
        array.flush()
        del array
        teacher.to(home).train(was_training)
