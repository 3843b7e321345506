"""The teacher's distillation targets on disk: built, reused, resumed, refused and rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.module import class_centres, class_centres_of_map, teacher_embeddings
from distill.targets import build_target_map
from faces.streaming import TensorSource, TrainingFaces

N, DIM = 37, 8


class _Teacher(nn.Module):
    """A deterministic tiny embedder that counts the images it sees."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, DIM))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.net(x)


def _faces() -> tuple[TrainingFaces, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 112, 112), dtype=torch.uint8, generator=g)
    return TrainingFaces(TensorSource(images), np.arange(N) % 5, augment="none"), images


def test_map_holds_both_views_in_fp16_and_is_reused(tmp_path: Path) -> None:
    faces, images = _faces()
    teacher = _Teacher()
    targets = build_target_map(tmp_path, "k1", teacher, faces, DIM, batch_size=8)
    expected = teacher_embeddings(teacher, images, batch_size=8)
    got = targets.rows(0, N)
    assert got.shape == (N, 2, DIM) and (tmp_path / "targets.f16").stat().st_size == N * 2 * DIM * 2
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)  # fp16 rounding
    index, mirrored = torch.tensor([3, 0, 36]), torch.tensor([True, False, True])
    torch.testing.assert_close(
        targets[index, mirrored], expected[index, mirrored.long()], atol=2e-3, rtol=2e-3
    )
    seen = teacher.seen
    again = build_target_map(tmp_path, "k1", teacher, faces, DIM, batch_size=8)
    assert teacher.seen == seen and torch.equal(again.rows(0, N), got)  # reused, not recomputed
    bank = targets.sample(10, seed=1, limit=20)
    assert bank.shape == (10, 2, DIM)


def test_a_killed_pass_continues_where_it_stopped(tmp_path: Path) -> None:
    faces, images = _faces()
    teacher = _Teacher()
    build_target_map(tmp_path, "k1", teacher, faces, DIM, batch_size=8)
    full = np.array(np.memmap(tmp_path / "targets.f16", np.float16, "r", shape=(N, 2, DIM)))
    # as if killed after 16 rows: later rows were never written
    meta = json.loads((tmp_path / "targets.json").read_text())
    (tmp_path / "targets.json").write_text(json.dumps({**meta, "done": 16}))
    rows = np.memmap(tmp_path / "targets.f16", np.float16, "r+", shape=(N, 2, DIM))
    rows[16:] = 0
    rows.flush()
    del rows
    messages: list[str] = []
    fresh = _Teacher()
    resumed = build_target_map(tmp_path, "k1", fresh, faces, DIM, batch_size=8, log=messages.append)
    assert fresh.seen == 2 * (N - 16)  # only the missing rows, image and mirror
    assert "at image 16 of 37" in messages[0]
    np.testing.assert_array_equal(resumed.rows(0, N).numpy(), full.astype(np.float32))


def test_a_map_of_another_teacher_or_data_set_is_refused_and_rebuilt(tmp_path: Path) -> None:
    faces, images = _faces()
    build_target_map(tmp_path, "teacher-a", _Teacher(0), faces, DIM, batch_size=8)
    messages: list[str] = []
    other = _Teacher(1)
    rebuilt = build_target_map(
        tmp_path, "teacher-b", other, faces, DIM, batch_size=8, log=messages.append
    )
    assert "made for another teacher or data set" in messages[0]
    assert other.seen == 2 * N
    torch.testing.assert_close(
        rebuilt.rows(0, N), teacher_embeddings(other, images), atol=2e-3, rtol=2e-3
    )
    assert json.loads((tmp_path / "targets.json").read_text())["key"] == "teacher-b"
    with pytest.raises(ValueError, match="4-d embeddings, not 8"):
        wrong = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
        build_target_map(tmp_path / "x", "k", wrong, faces, DIM)


def test_class_centres_read_in_chunks_equal_the_in_memory_ones(tmp_path: Path) -> None:
    faces, _ = _faces()
    targets = build_target_map(tmp_path, "k", _Teacher(), faces, DIM, batch_size=8)
    labels = torch.arange(N) % 5
    for head in (None, torch.randn(5, DIM)):
        centres, spread = class_centres_of_map(targets, labels, 5, head, chunk=7)
        want_c, want_s = class_centres(targets.rows(0, N), labels, 5, head)
        torch.testing.assert_close(centres, want_c)
        torch.testing.assert_close(spread, want_s)


def test_a_second_builder_waits_for_the_first_and_reuses_its_map(tmp_path: Path) -> None:
    import fcntl
    import threading

    from distill.targets import LOCK

    faces, _ = _faces()
    first = build_target_map(tmp_path, "k1", _Teacher(), faces, DIM, batch_size=8)
    messages: list[str] = []
    teacher = _Teacher()
    with open(tmp_path / LOCK, "w") as held:  # another process is building the map
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(
            target=build_target_map,
            args=(tmp_path, "k1", teacher, faces, DIM),
            kwargs={"batch_size": 8, "log": messages.append},
        )
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive()  # blocked on the lock, not building beside it
    worker.join(timeout=30)
    assert not worker.is_alive() and teacher.seen == 0  # then found the finished map
    assert any("waiting for another process" in m for m in messages)
    assert torch.equal(
        first.rows(0, N), build_target_map(tmp_path, "k1", teacher, faces, DIM).rows(0, N)
    )
