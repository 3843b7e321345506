"""Tests for faces.synthetic (layout, determinism, errors, identity separability)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faces.synthetic import main, write_synthetic_faces


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_layout_size_and_mode(tmp_path: Path) -> None:
    root = write_synthetic_faces(tmp_path / "faces", identities=3, images_per_identity=4, seed=0)
    assert root == tmp_path / "faces"
    ids = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert ids == ["id_0000", "id_0001", "id_0002"]
    for d in ids:
        imgs = sorted(p.name for p in (root / d).iterdir())
        assert imgs == ["img_000.jpg", "img_001.jpg", "img_002.jpg", "img_003.jpg"]
    with Image.open(root / "id_0001" / "img_002.jpg") as im:
        assert im.format == "JPEG"
        assert im.mode == "RGB"
        assert im.size == (112, 112)
    readme = (root / "README.txt").read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme and "seed=0" in readme
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_custom_size(tmp_path: Path) -> None:
    root = write_synthetic_faces(tmp_path / "s", identities=2, images_per_identity=2, size=64)
    with Image.open(root / "id_0000" / "img_000.jpg") as im:
        assert im.size == (64, 64)


def test_deterministic(tmp_path: Path) -> None:
    a = _files(write_synthetic_faces(tmp_path / "a", 4, 3, seed=5, size=64))
    b = _files(write_synthetic_faces(tmp_path / "b", 4, 3, seed=5, size=64))
    c = _files(write_synthetic_faces(tmp_path / "c", 4, 3, seed=6, size=64))
    assert a == b
    assert a.keys() == c.keys()
    assert a["id_0000/img_000.jpg"] != c["id_0000/img_000.jpg"]
    # An identity does not depend on how many identities / images are generated.
    d = _files(write_synthetic_faces(tmp_path / "d", 2, 2, seed=5, size=64))
    assert d["id_0001/img_001.jpg"] == a["id_0001/img_001.jpg"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"identities": 1},
        {"identities": 0},
        {"images_per_identity": 1},
        {"identities": 2.5},
        {"seed": -1},
        {"size": 4},
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        write_synthetic_faces(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_replaces_own_output_but_not_foreign_folders(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    write_synthetic_faces(root, identities=4, images_per_identity=2, size=32)
    write_synthetic_faces(root, identities=2, images_per_identity=2, size=32)
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "id_0000", "id_0001"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("important")
    with pytest.raises(FileExistsError):
        write_synthetic_faces(foreign, identities=2, images_per_identity=2, size=32)
    assert (foreign / "keep.txt").read_text() == "important"

    empty = tmp_path / "empty"
    empty.mkdir()
    write_synthetic_faces(empty, identities=2, images_per_identity=2, size=32)
    assert (empty / "id_0001" / "img_001.jpg").is_file()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = [str(out), "--identities", "2", "--images-per-identity", "3", "--seed", "1"]
    assert main([*argv, "--size", "48"]) == 0
    assert "6 synthetic images" in capsys.readouterr().out
    assert len(list(out.glob("id_*/img_*.jpg"))) == 6
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--identities", "1"])


def test_identities_are_separable_in_pixel_space(tmp_path: Path) -> None:
    n_id, n_img = 12, 6
    root = write_synthetic_faces(tmp_path / "sep", n_id, n_img, seed=3, size=64)
    x = np.stack(
        [
            np.asarray(Image.open(root / f"id_{i:04d}" / f"img_{j:03d}.jpg"), dtype=np.float64)
            for i in range(n_id)
            for j in range(n_img)
        ]
    ).reshape(n_id * n_img, -1)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    ids = np.repeat(np.arange(n_id), n_img)
    same = ids[:, None] == ids[None, :]
    off_diag = ~np.eye(len(ids), dtype=bool)
    same_mean = sim[same & off_diag].mean()
    diff_mean = sim[~same].mean()
    assert same_mean > diff_mean + 0.1
    # ...but not trivially: images of one identity still vary a lot.
    assert same_mean < 0.95
    # Per identity, same-identity pairs are more similar on average than different ones.
    per_id_same = np.array([sim[same & off_diag & (ids[:, None] == i)].mean() for i in range(n_id)])
    per_id_diff = np.array([sim[~same & (ids[:, None] == i)].mean() for i in range(n_id)])
    assert np.mean(per_id_same > per_id_diff) >= 0.75
