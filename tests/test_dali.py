"""``data.loader: dali`` on the CPU (DALI's CPU decoder): what it reads is the training set.

Skipped where NVIDIA DALI is not installed (it is the ``gpu`` extra); on a GPU machine the
same loader decodes with nvJPEG (``device="gpu"``)."""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_pipeline import TINY

from faces import streaming
from faces.dali_loader import DaliFaces, dali_available
from faces.recordio import RecordIOFaces, write_recordio

pytestmark = pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI is not installed")


def _png(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (112, 112, 3), dtype=torch.uint8, generator=g).numpy()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dali") / "rec"
    # 6 people x 8 faces, labels 10, 11, ... (header labels need not start at 0)
    return write_recordio(root, [(_png(i), 10 + i // 8) for i in range(48)])


def _digest(image: torch.Tensor) -> str:
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()


def _faces(rec: Path, tmp_path: Path, keep: slice = slice(None)) -> tuple[DaliFaces, dict]:
    reader = RecordIOFaces(rec)
    rows = np.arange(len(reader))[keep]
    labels = (reader.labels[rows] - 10).astype(np.int64)  # training labels 0..K-1
    truth = {_digest(reader[int(r)][0]): int(lab) for r, lab in zip(rows, labels, strict=True)}
    loader = DaliFaces(
        rec, reader.keys[rows], labels, reader.labels[rows], 8, tmp_path, seed=1, device="cpu"
    )
    return loader, truth


def test_an_epoch_reads_every_training_face_once_with_its_label(rec: Path, tmp_path) -> None:
    loader, truth = _faces(rec, tmp_path, slice(0, 40))  # the last person held out
    assert len(loader) == 5
    for _ in range(2):  # two epochs, reshuffled
        seen = []
        for images, index, labels, mirror in loader:
            assert images.shape == (8, 3, 112, 112) and images.dtype == torch.uint8
            assert (index == -1).all()
            for image, label, flipped in zip(images, labels, mirror, strict=True):
                key = _digest(image.flip(-1) if flipped else image)
                assert truth[key] == int(label)
                seen.append(key)
        assert sorted(seen) == sorted(truth)  # every training face once, none held out
    # the index DALI reads lists the training images only, in the cache folder given
    index = next(tmp_path.glob("*.idx")).read_text().splitlines()
    assert len(index) == 40 and index[0].split("\t")[0] == "1"


def test_ranks_read_disjoint_shards(rec: Path, tmp_path, monkeypatch) -> None:
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(streaming, "world", lambda r=rank: (r, 2))
        loader, truth = _faces(rec, tmp_path)
        assert len(loader) == 3
        shards.append(
            {
                _digest(img.flip(-1) if m else img)
                for images, _, _, mirror in loader
                for img, m in zip(images, mirror, strict=True)
            }
        )
    assert not (shards[0] & shards[1]) and len(shards[0] | shards[1]) == 48


def test_a_teacher_trains_from_dali_and_cached_targets_are_refused(
    rec: Path, tmp_path, monkeypatch
):
    from pipelines.cli import main

    config = copy.deepcopy(TINY)
    config["stages"] = ["teacher", "distill"]
    config["data"] = {"train": str(rec), "eval_fraction": 0.34, "eval_pairs": 40, "loader": "dali"}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "d.yaml", "--set", "stages=[teacher]"]) == 0
    assert (tmp_path / "runs" / "tiny" / "teacher" / "teacher.pt").is_file()
    assert main(["run", "d.yaml"]) == 2  # distill with cached targets needs image positions
    assert main(["run", "d.yaml", "--set", "distill.teacher_targets=online"]) == 0
