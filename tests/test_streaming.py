"""Training faces read on demand: sources, samples, the epoch sampler, workers and their faults."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from faces import streaming
from faces.data import FaceDataError
from faces.recordio import RecordIOFaces, write_recordio
from faces.streaming import (
    ConcatSource,
    EpochSampler,
    FolderSource,
    RecordIOSource,
    TensorSource,
    TrainingFaces,
    worker_init,
)
from faces.transforms import apply_augment, augment, augment_params
from pipelines.training.loading import loader_errors, make_loader, resolve_workers, training_threads


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8, generator=g)


def _jpeg(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def recordio(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    images = _images(12)
    samples = [(_jpeg(img), i // 3) for i, img in enumerate(images)]
    return write_recordio(tmp_path / "rec", samples), images


def test_sources_read_the_same_faces(tmp_path: Path, recordio) -> None:
    root, images = recordio
    rec = RecordIOSource(root, np.arange(12))
    paths = []
    for i, img in enumerate(images):
        p = tmp_path / "folder" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(_jpeg(img))
        paths.append(p)
    folder = FolderSource(paths)
    both = ConcatSource([TensorSource(images[:5]), rec])
    assert len(rec) == len(folder) == 12 and len(both) == 17
    for i in (0, 7, 11):
        assert torch.equal(rec.read(i), images[i])  # PNG: lossless
        assert torch.equal(folder.read(i), images[i])
        assert torch.equal(both.read(5 + i), images[i])
    assert torch.equal(both.read(4), images[4])
    assert rec.key(3).endswith("train.rec record 4")  # images are keys 1..N
    assert folder.key(2) == str(paths[2])
    assert not isinstance(folder.paths, list)  # one numpy array, shared by forked workers


def test_samples_are_deterministic_per_seed_epoch_and_index() -> None:
    faces = TrainingFaces(TensorSource(_images(6)), np.arange(6), seed=1)
    a, b = faces[(0, 3)], faces[(0, 3)]
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    others = [faces[(e, 3)][0] for e in range(1, 6)]
    assert any(not torch.equal(a[0], o) for o in others)  # epochs draw anew
    image, index, label, mirrored = faces[(2, 4)]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
    assert index == 4 and int(label) == 4 and isinstance(mirrored, bool)
    flags = [faces[(e, i)][3] for e in range(20) for i in range(6)]
    assert 0.3 < np.mean(flags) < 0.7
    plain = TrainingFaces(TensorSource(_images(6)), np.arange(6), augment="none")
    assert torch.equal(plain[(5, 2)][0], _images(6)[2]) and plain[(5, 2)][3] is False


def test_mirrored_sample_without_augmentation_is_the_flipped_image() -> None:
    images = _images(8)
    faces = TrainingFaces(TensorSource(images), np.arange(8), augment="batch")
    for i in range(8):
        image, _, _, mirrored = faces[(0, i)]
        assert torch.equal(image, images[i].flip(-1) if mirrored else images[i])


def test_batch_and_sample_augmentation_apply_the_same_draws() -> None:
    images = _images(5)
    params = augment_params(5, torch.Generator().manual_seed(3))
    batch = apply_augment(images, params)
    for i in range(5):
        one = {k: v[i : i + 1] for k, v in params.items()}
        assert torch.equal(apply_augment(images[i : i + 1], one)[0], batch[i])
    # the GPU path (one gather) gives what the CPU path (slices) gives
    assert torch.equal(apply_augment(images, params, gather=True), batch)
    # a shift moves the image by (dx - 4, dy - 4) pixels, edges replicated
    still = {**params, "brightness": torch.ones(5), "contrast": torch.ones(5)}
    still["flip"] = torch.zeros(5, dtype=torch.bool)
    out = apply_augment(images, still)
    dx, dy = int(still["dx"][0]) - 4, int(still["dy"][0]) - 4
    inner = out[0, :, 10:100, 10:100]
    src = images[0, :, 10 + dy : 100 + dy, 10 + dx : 100 + dx]
    assert (inner.int() - src.int()).abs().max() <= 1
    # the distributions: flips about half, shifts within 4 px, jitter within 15%
    many = augment_params(4000, torch.Generator().manual_seed(0))
    assert 0.45 < many["flip"].float().mean() < 0.55
    assert many["dx"].min() == 0 and many["dx"].max() == 8
    assert many["brightness"].min() >= 0.85 and many["brightness"].max() <= 1.15
    assert augment(images, torch.Generator().manual_seed(3)).shape == images.shape


def test_epoch_sampler_shards_are_disjoint_and_reshuffle(monkeypatch) -> None:
    sampler = EpochSampler(103, batch_size=4, seed=5)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(streaming, "world", lambda r=rank: (r, 3))
        sampler.set_epoch(2)
        items = list(sampler)
        assert len(items) == len(sampler) == 34 and all(e == 2 for e, _ in items)
        shards.append({i for _, i in items})
    assert not (shards[0] & shards[1]) and not (shards[1] & shards[2])
    assert not (shards[0] & shards[2])  # no image twice per epoch across ranks
    monkeypatch.setattr(streaming, "world", lambda: (0, 1))
    sampler.set_epoch(0)
    first = [i for _, i in sampler]
    sampler.set_epoch(1)
    assert sorted(first) == list(range(103)) and first != [i for _, i in sampler]


def test_epoch_sampler_resumes_after_the_batches_done() -> None:
    sampler = EpochSampler(40, batch_size=4, seed=0)
    sampler.set_epoch(3)
    whole = list(sampler)
    sampler.resume_at(3, 6)
    sampler.set_epoch(3)  # Lightning sets the same epoch again: the position stays
    assert list(sampler) == whole[24:]
    assert list(sampler) == whole  # once only
    sampler.resume_at(3, 6)
    sampler.set_epoch(4)  # another epoch: the position does not apply
    assert len(list(sampler)) == 40


def test_labelled_share_order_in_the_sampler() -> None:
    sampler = EpochSampler(100, batch_size=10, seed=0, n_labelled=20, labelled_share=0.5)
    items = [i for _, i in sampler]
    assert len(items) == 100 and sum(i < 20 for i in items) == 50


def test_workers_give_the_batches_of_the_training_process(recordio) -> None:
    root, _ = recordio
    reader = RecordIOFaces(root)

    def batches(workers: int) -> list[torch.Tensor]:
        faces = TrainingFaces(RecordIOSource(root, np.arange(12)), reader.labels, seed=2)
        sampler = EpochSampler(12, 4, seed=2)
        loader = make_loader(faces, sampler, 4, workers)
        out = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            out += [b[0] for b in loader]
        return out

    alone, two = batches(0), batches(2)
    assert len(alone) == 6 and all(torch.equal(a, b) for a, b in zip(alone, two, strict=True))


def _corrupt(root: Path, record: int) -> None:
    """Overwrite the JPEG/PNG bytes of image record ``record`` with garbage."""
    reader = RecordIOFaces(root)
    offset = reader._offset(record)
    data = bytearray((root / "train.rec").read_bytes())
    start = offset + 8 + 24 + 16  # past magic, length, IRHeader and the PNG signature
    data[start : start + 64] = b"\xff" * 64
    (root / "train.rec").write_bytes(bytes(data))


def test_a_corrupt_record_mid_epoch_follows_bad_images(recordio, capfd) -> None:
    root, images = recordio
    _corrupt(root, 5)  # the 5th image
    labels = RecordIOFaces(root).labels
    failing = TrainingFaces(RecordIOSource(root, np.arange(12)), labels, bad_images="fail")
    loader = make_loader(failing, EpochSampler(12, 4), 4, workers=1)
    with pytest.raises(FaceDataError, match=r"record 5\b") as err, loader_errors(failing):
        list(loader)
    assert "Traceback" not in str(err.value)
    skipping = TrainingFaces(
        RecordIOSource(root, np.arange(12)), labels, augment="none", bad_images="skip"
    )
    assert torch.equal(skipping[4][0], images[5])  # the next readable image takes its place
    batches = list(make_loader(skipping, EpochSampler(12, 4), 4, workers=1))
    assert sum(len(b[0]) for b in batches) == 12
    assert "warning: skipped:" in capfd.readouterr().out and "record 5" in str(err.value)


class _Dies(TensorSource):
    def read(self, i: int) -> torch.Tensor:
        if i == 7 and torch.utils.data.get_worker_info() is not None:
            os._exit(9)  # a worker killed (out of memory, a segfault in a decoder)
        return super().read(i)


def test_a_dead_worker_is_named_with_its_image_not_a_hang() -> None:
    faces = TrainingFaces(_Dies(_images(12), [f"face{i}.jpg" for i in range(12)]), np.arange(12))
    loader = make_loader(faces, EpochSampler(12, 4), 4, workers=1)
    died = r"worker \(pid \d+\) died while reading face7.jpg"
    with pytest.raises(FaceDataError, match=died), loader_errors(faces):
        list(loader)


def test_worker_counts_and_thread_budget() -> None:
    assert resolve_workers("auto", 2) == 1 and resolve_workers("auto", 1) == 0
    assert resolve_workers("auto", 16, in_memory=True) == 0
    assert resolve_workers(2, 2) == 2
    with pytest.raises(FaceDataError, match="data.num_workers = 3 but .* 2 CPU"):
        resolve_workers(3, 2)
    assert training_threads(2, 1) == 1 and training_threads(16, 4) == 12
    assert training_threads(2, 2) == 1
    worker_init(0)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)


def test_dataloader_of_plain_indices_works_too() -> None:
    faces = TrainingFaces(TensorSource(_images(4)), np.arange(4))
    batch = next(iter(DataLoader(faces, batch_size=2)))
    assert batch[0].shape == (2, 3, 112, 112) and batch[1].tolist() == [0, 1]


def test_sigterm_during_training_asks_for_a_checkpoint_then_stops(tmp_path: Path) -> None:
    import signal

    from pipelines.training.loading import StepCheckpoint, checkpoint_on_sigterm

    callback = StepCheckpoint(tmp_path / "last.ckpt", every=0)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), checkpoint_on_sigterm(callback):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives after the last step: no batch ends
        assert callback.stop_requested  # noted, not acted on in the middle of a step
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back
