"""DataContext on the other data formats: RecordIO training sets, .bin and pairs.txt evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from faces.data import load_image, scan_image_folder
from faces.recordio import write_recordio
from faces.synthetic import write_synthetic_faces
from faces.transforms import normalise
from faces.verification_sets import write_bin
from pipelines.core.config import ConfigError, load_config
from pipelines.training.data import DataContext, is_recordio

IDS, PER = 6, 4


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic faces as an ImageFolder, the same packed as RecordIO, a .bin and a pairs.txt."""
    base = tmp_path_factory.mktemp("formats")
    folder = write_synthetic_faces(base / "faces", IDS, PER, seed=3)
    index = scan_image_folder(folder, cache=False)
    samples = [(p.read_bytes(), int(lab)) for p, lab in zip(index.paths, index.labels, strict=True)]
    rec = write_recordio(base / "rec", samples)
    other = write_synthetic_faces(base / "other", 3, 2, seed=9)
    o = scan_image_folder(other, cache=False)
    raw = [p.read_bytes() for p in o.paths]  # 3 people x 2 images
    bin_path = write_bin(base / "tiny_set.bin", [(raw[0], raw[1]), (raw[0], raw[2])], [1, 0])
    # LFW layout: root/<name>/<name>_0001.jpg
    lfw = base / "lfw_like"
    for name, (a, b) in {"Ann_A": (0, 1), "Bob_B": (2, 3), "Cy_C": (4, 5)}.items():
        (lfw / name).mkdir(parents=True)
        (lfw / name / f"{name}_0001.jpg").write_bytes(raw[a])
        (lfw / name / f"{name}_0002.jpg").write_bytes(raw[b])
    pairs = base / "pairs.txt"
    pairs.write_text("1\t1\nAnn_A\t1\t2\nBob_B\t1\tCy_C\t2\n")
    return {
        "folder": folder,
        "rec": rec,
        "bin": bin_path,
        "lfw": lfw,
        "pairs": pairs,
        "other": other,
        "raw0": o.paths[0],
    }


def _context(tmp_path: Path, data: dict) -> DataContext:
    raw = {"pipeline": {"name": "fmt", "seed": 0}, "data": {"eval_pairs": 20, **data}}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return DataContext(load_config(path), tmp_path / "out")


def test_recordio_train_matches_image_folder(tmp_path: Path, sets: dict[str, Path]) -> None:
    assert is_recordio(sets["rec"]) and not is_recordio(sets["folder"])
    rec = _context(tmp_path, {"train": str(sets["rec"]), "eval": str(sets["bin"])})
    img = _context(tmp_path, {"train": str(sets["folder"]), "eval": str(sets["bin"])})
    assert len(rec.train_index) == IDS * PER and len(rec.train_index.identities) == IDS
    source, index = rec.train_source
    images = torch.stack([source.read(i) for i in range(len(source))])
    assert images.shape == (IDS * PER, 3, 112, 112) and images.dtype == torch.uint8
    faces = rec.training_faces(augment="none")
    image, i, label, mirrored = faces[5]
    assert image.dtype == torch.uint8 and int(label) == 1 and i == 5 and not mirrored
    img_source, img_index = img.train_source
    np.testing.assert_array_equal(index.labels, img_index.labels)
    assert torch.equal(images, img_source.images)  # same JPEGs, same decoder
    assert rec.fingerprint()["train"] != img.fingerprint()["train"]


def test_recordio_heldout_split_and_streaming(tmp_path: Path, sets: dict[str, Path]) -> None:
    ctx = _context(tmp_path, {"train": str(sets["rec"]), "eval_fraction": 0.34})
    assert len(ctx.train_index.identities) == 4 and len(ctx.eval_index.identities) == 2
    assert ctx.eval_images.shape == (2 * PER, 3, 112, 112)
    assert ctx.eval_pairs.shape[1] == 3 and ctx.eval_name == "rec_heldout"
    assert ctx.probe_batch(3).shape == (3, 3, 112, 112)
    # over the memory budget the same images are read on demand through the index
    streamed = _context(
        tmp_path, {"train": str(sets["rec"]), "eval_fraction": 0.34, "cache_in_memory": False}
    )
    source, index = streamed.train_source
    assert type(source).__name__ == "RecordIOSource" and len(source) == len(ctx.train_index)
    memory, _ = ctx.train_source
    assert type(memory).__name__ == "TensorSource"
    for i in (0, 3, len(source) - 1):
        assert torch.equal(source.read(i), memory.read(i))
    assert "record" in source.key(0)
    budget = _context(tmp_path, {"train": str(sets["rec"]), "memory_budget_mb": 0})
    assert type(budget.train_source[0]).__name__ == "RecordIOSource"


def test_bin_eval_set(tmp_path: Path, sets: dict[str, Path]) -> None:
    ctx = _context(tmp_path, {"train": str(sets["folder"]), "eval": str(sets["bin"])})
    assert ctx.eval_name == "tiny_set"
    assert ctx.eval_images.shape == (3, 3, 112, 112)  # the repeated image is decoded once
    np.testing.assert_array_equal(ctx.eval_pairs, [[0, 1, 1], [0, 2, 0]])
    np.testing.assert_array_equal(ctx.eval_images[0].numpy(), load_image(sets["raw0"]))
    probe = ctx.probe_batch(2)
    assert probe.shape == (2, 3, 112, 112) and probe.dtype == torch.float32
    assert torch.equal(probe[0], normalise(ctx.eval_images[:1])[0])
    assert ctx.eval_index is None and len(ctx.train_index.identities) == IDS


def test_bin_fingerprint_follows_content(tmp_path: Path, sets: dict[str, Path]) -> None:
    raw = sets["raw0"].read_bytes()
    path = write_bin(tmp_path / "e.bin", [(raw, raw)], [1])
    data = {"train": str(sets["folder"]), "eval": str(path)}
    first = _context(tmp_path, data).fingerprint()
    assert first == _context(tmp_path, data).fingerprint()
    assert first["eval_pairs"] is None  # the file fixes the pairs
    write_bin(path, [(raw, raw)], [0])
    assert _context(tmp_path, data).fingerprint() != first


def test_pairs_txt_eval_set(tmp_path: Path, sets: dict[str, Path]) -> None:
    data = {
        "train": str(sets["folder"]),
        "eval": str(sets["lfw"]),
        "eval_pairs_file": str(sets["pairs"]),
    }
    ctx = _context(tmp_path, data)
    assert ctx.eval_name == "lfw_like"
    np.testing.assert_array_equal(ctx.eval_pairs, [[0, 1, 1], [2, 3, 0]])
    assert ctx.eval_images.shape == (4, 3, 112, 112)
    assert ctx.probe_batch(8).shape == (4, 3, 112, 112)
    fp = ctx.fingerprint()
    assert fp["eval"]["pairs_file"]["sha256"]
    sets["pairs"].write_text("1\t1\nAnn_A\t1\t2\nBob_B\t2\tCy_C\t1\n")
    try:
        assert _context(tmp_path, data).fingerprint() != fp
    finally:
        sets["pairs"].write_text("1\t1\nAnn_A\t1\t2\nBob_B\t1\tCy_C\t2\n")


def test_image_folder_eval_uses_seeded_pairs(tmp_path: Path, sets: dict[str, Path]) -> None:
    ctx = _context(tmp_path, {"train": str(sets["folder"]), "eval": str(sets["other"])})
    assert ctx.eval_name == "other" and ctx.fingerprint()["eval_pairs"] == 20
    pairs = ctx.eval_pairs
    assert pairs.shape[1] == 3 and set(pairs[:, 2].tolist()) == {0, 1}
    assert int(pairs[:, :2].max()) < len(ctx.eval_images)
    assert ctx.probe_batch(2).shape == (2, 3, 112, 112)


def test_config_paths(tmp_path: Path, sets: dict[str, Path]) -> None:
    def error(data: dict) -> str:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"pipeline": {"name": "x"}, "data": data}))
        with pytest.raises(ConfigError) as info:
            load_config(path)
        return str(info.value)

    missing = tmp_path / "gone.bin"
    assert "data.eval" in error({"eval": str(missing)}) and str(missing) in error(
        {"eval": str(missing)}
    )
    assert "data.eval" in error({"eval": str(sets["pairs"])})  # a file that is not a .bin
    msg = error({"eval": str(sets["lfw"]), "eval_pairs_file": str(tmp_path / "no_pairs.txt")})
    assert "data.eval_pairs_file" in msg and "no_pairs.txt" in msg
    assert "data.eval_pairs_file" in error(
        {"eval": str(sets["bin"]), "eval_pairs_file": str(sets["pairs"])}
    )


def test_extra_training_folders_join_the_people(tmp_path: Path, sets: dict[str, Path]) -> None:
    ctx = _context(tmp_path, {"train": str(sets["folder"]), "extra_train": [str(sets["other"])]})
    index = ctx._scan_train()
    assert len(index.identities) == IDS + 3 and len(index) == IDS * PER + 6
    assert index.identities[-1].startswith("other/") and index.identities[0].startswith("faces/")
    assert set(np.unique(index.labels)) == set(range(IDS + 3))
    assert ctx.eval_name == "faces-other_heldout"
    held = set(ctx.eval_index.identities)
    assert held and not held & set(ctx.train_index.identities)
    alone = _context(tmp_path, {"train": str(sets["folder"])})
    assert ctx.fingerprint() != alone.fingerprint()
    with pytest.raises(ConfigError, match=r"data.extra_train\[0\]"):
        _context(tmp_path, {"train": str(sets["folder"]), "extra_train": ["/nowhere"]})
