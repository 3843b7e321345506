"""Chunked streaming sets (litdata): facekd pack, reading faces back, training on them."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_pipeline import TINY

from faces.chunks import ChunkSource, chunk_index, is_chunked
from faces.data import FaceDataError, scan_image_folder
from faces.recordio import RecordIOFaces, write_recordio
from faces.streaming import FolderSource, RecordIOSource
from faces.synthetic import write_synthetic_faces
from pipelines.cli import main

pytestmark = pytest.mark.slow  # packing starts a litdata worker process: ~10 s per set


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("chunks")
    folder = write_synthetic_faces(base / "faces", 10, 6, seed=4)
    index = scan_image_folder(folder, cache=False)
    raw = [(p.read_bytes(), int(lab)) for p, lab in zip(index.paths, index.labels, strict=True)]
    rec = write_recordio(base / "rec", raw)
    assert main(["pack", str(rec), str(base / "rec_chunks")]) == 0
    assert main(["pack", str(folder), str(base / "folder_chunks")]) == 0
    return {"base": base, "folder": folder, "rec": rec}


def test_packed_faces_read_back_equal(sets: dict[str, Path]) -> None:
    rec_chunks, folder_chunks = sets["base"] / "rec_chunks", sets["base"] / "folder_chunks"
    assert is_chunked(rec_chunks) and is_chunked(folder_chunks) and not is_chunked(sets["rec"])
    index = chunk_index(rec_chunks)
    np.testing.assert_array_equal(index.labels, RecordIOFaces(sets["rec"]).labels)
    chunks = ChunkSource(rec_chunks, index.records)
    records = RecordIOSource(sets["rec"], np.arange(60))
    for i in (0, 17, 59):
        assert torch.equal(chunks.read(i), records.read(i))
    folder_index = chunk_index(folder_chunks)
    assert folder_index.identities == scan_image_folder(sets["folder"], cache=False).identities
    files = FolderSource(scan_image_folder(sets["folder"], cache=False).paths)
    assert torch.equal(ChunkSource(folder_chunks, folder_index.records).read(9), files.read(9))


def test_a_pipeline_trains_on_a_chunked_set(sets: dict[str, Path], tmp_path, monkeypatch):
    config = copy.deepcopy(TINY)
    config["stages"] = ["teacher", "distill"]
    config["data"] = {
        "train": str(sets["base"] / "folder_chunks"),
        "eval_fraction": 0.3,
        "eval_pairs": 40,
        "cache_in_memory": False,
        "num_workers": 1,
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "c.yaml"]) == 0
    assert (tmp_path / "runs" / "tiny" / "distill" / "student.pt").is_file()


def test_a_set_cut_short_names_the_face(sets: dict[str, Path], tmp_path) -> None:
    short = tmp_path / "short"
    shutil.copytree(sets["base"] / "rec_chunks", short)
    for chunk in short.glob("chunk-*.bin"):
        chunk.unlink()
    source = ChunkSource(short, chunk_index(short).records)
    with pytest.raises(FaceDataError, match=r"short face 3: .*chunk"):
        source.read(3)
    assert main(["pack", str(sets["folder"]), str(short)]) == 2  # not over another set
