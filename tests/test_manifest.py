"""The ImageFolder manifest cache of faces.data: reuse, invalidation, where it is kept (the
cache folder by default: data folders are left untouched; beside the data when asked)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import faces.data as fd
from faces.data import (
    folder_fingerprint,
    list_image_folder,
    listing_fingerprint,
    manifest_path,
    scan_image_folder,
)


def _jpg(path: Path, seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path, quality=80)


def _backdate(root: Path, seconds: int = 3600) -> None:
    """Move the folders' mtimes into the past: their stamps are trusted (not racy)."""
    old = time.time_ns() - seconds * 1_000_000_000
    for d in [root, *(p for p in root.iterdir() if p.is_dir() and p.name != fd.MANIFEST_DIR)]:
        os.utime(d, ns=(old, old))


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    for p in range(3):
        (root / f"p{p}").mkdir(parents=True)
        for k in range(3):
            _jpg(root / f"p{p}" / f"{k}.jpg", p * 10 + k)
    return root


@pytest.fixture()
def listed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The folders os.scandir lists while the test runs."""
    calls: list[str] = []
    real = os.scandir

    def counting(path: str | os.PathLike = ".") -> os.ScandirIterator:  # type: ignore[name-defined]
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    yield calls


def _settled(root: Path, manifest: str = "cache") -> None:
    """First scan (creates the manifest), then a backdated one: stamps are trusted."""
    scan_image_folder(root, manifest=manifest)
    _backdate(root)
    scan_image_folder(root, manifest=manifest)


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under root (folders too) with its mode, mtime and content."""
    out = {}
    for p in sorted([root, *root.rglob("*")]):
        st = p.stat()
        out[str(p.relative_to(root))] = (
            st.st_mode,
            st.st_mtime_ns,
            p.read_bytes() if p.is_file() else b"",
        )
    return out


@pytest.mark.parametrize("place", ["cache", "beside"])
def test_manifest_reused_without_listing(
    faces: Path, listed: list[str], place: str, facekd_cache: Path
) -> None:
    fresh = scan_image_folder(faces, cache=False)
    _settled(faces, place)
    expected = (
        faces / ".facekd" / "manifest.json"
        if place == "beside"
        else facekd_cache / "manifests" / fd.cache_path("manifests", faces).name
    )
    assert manifest_path(faces, place) == expected
    assert expected.is_file()
    listed.clear()
    index = scan_image_folder(faces, manifest=place)
    assert listed == []  # neither the root nor any person folder was listed
    assert index.paths == fresh.paths and index.identities == fresh.identities
    np.testing.assert_array_equal(index.labels, fresh.labels)
    data = json.loads(expected.read_text())
    assert data["people"]["p1"]["files"] == ["0.jpg", "1.jpg", "2.jpg"]
    assert data["root_mtime_ns"] == faces.stat().st_mtime_ns
    assert ".facekd" not in index.identities


def test_added_file_relists_only_its_folder(faces: Path, listed: list[str]) -> None:
    _settled(faces)
    before = listing_fingerprint(faces)
    _jpg(faces / "p2" / "9.jpg", 99)
    listed.clear()
    index = scan_image_folder(faces)
    assert listed == ["p2"]
    assert faces / "p2" / "9.jpg" in index.paths and len(index) == 10
    assert listing_fingerprint(faces) != before
    (faces / "p0" / "1.jpg").rename(faces / "p0" / "5.jpg")
    assert faces / "p0" / "5.jpg" in scan_image_folder(faces).paths
    (faces / "p0" / "5.jpg").unlink()
    assert len(scan_image_folder(faces)) == 9


def test_added_person_relists_root(faces: Path, listed: list[str]) -> None:
    _settled(faces)
    (faces / "p9").mkdir()
    _jpg(faces / "p9" / "a.jpg", 5)
    _jpg(faces / "p9" / "b.jpg", 6)
    listed.clear()
    index = scan_image_folder(faces, min_images=2)
    assert sorted(listed) == ["faces", "p9"]
    assert index.identities == ("p0", "p1", "p2", "p9")
    (faces / "p9" / "b.jpg").unlink()
    assert scan_image_folder(faces, min_images=2).identities == ("p0", "p1", "p2")


def test_recent_folders_are_listed_again(faces: Path, listed: list[str]) -> None:
    """A folder changed within RACY_NS of its listing may change again in the same mtime tick."""
    scan_image_folder(faces)
    listed.clear()
    scan_image_folder(faces)
    assert sorted(listed) == ["faces", "p0", "p1", "p2"]


def test_corrupt_manifest_is_ignored(faces: Path) -> None:
    _settled(faces)
    manifest_path(faces).write_text("{not json")
    assert len(scan_image_folder(faces)) == 9
    assert json.loads(manifest_path(faces).read_text())["version"] == fd.MANIFEST_VERSION


def test_default_leaves_the_data_folder_untouched(faces: Path) -> None:
    _backdate(faces)
    before = _snapshot(faces)
    scan_image_folder(faces)
    scan_image_folder(faces)
    listing_fingerprint(faces)
    assert _snapshot(faces) == before and not (faces / ".facekd").exists()


def test_old_manifest_folder_beside_the_data_is_ignored(faces: Path) -> None:
    """A ``.facekd`` folder left by an older facekd is not a person and is not written."""
    _settled(faces, "beside")
    _backdate(faces)
    before = _snapshot(faces)
    index = scan_image_folder(faces)
    assert ".facekd" not in index.identities and len(index) == 9
    assert _snapshot(faces) == before


def test_cache_folder_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faces.cache import cache_dir

    monkeypatch.setenv("FACEKD_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "own"
    monkeypatch.delenv("FACEKD_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "facekd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "facekd"


def test_unknown_manifest_place_is_refused(faces: Path) -> None:
    with pytest.raises(ValueError, match="manifest must be one of"):
        scan_image_folder(faces, manifest="inside")


def test_read_only_root_beside_falls_back_to_the_cache(
    faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: list[str]
) -> None:
    monkeypatch.setenv("FACEKD_CACHE", str(tmp_path / "cache"))
    _backdate(faces)
    dirs = [faces, *faces.iterdir()]
    for d in dirs:
        d.chmod(0o555)
    try:
        path = manifest_path(faces, "beside")
        assert path.parent == tmp_path / "cache" / "manifests"
        first = scan_image_folder(faces, manifest="beside")
        assert path.is_file() and not (faces / ".facekd").exists()
        listed.clear()
        again = scan_image_folder(faces, manifest="beside")
        assert listed == [] and again.paths == first.paths
    finally:
        for d in dirs:
            d.chmod(0o755)


def test_folder_fingerprint_ignores_the_manifest(faces: Path) -> None:
    fp = folder_fingerprint(faces)
    scan_image_folder(faces, manifest="beside")
    assert (faces / ".facekd").is_dir()
    assert folder_fingerprint(faces) == fp
    assert list_image_folder(faces) == list_image_folder(faces, cache=False)


def test_person_folder_gone_behind_an_unchanged_root_stamp(faces: Path) -> None:
    _settled(faces)
    st = faces.stat()
    shutil.rmtree(faces / "p1")
    os.utime(faces, ns=(st.st_atime_ns, st.st_mtime_ns))  # the root stamp still matches
    assert scan_image_folder(faces).identities == ("p0", "p2")
