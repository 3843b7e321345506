"""Tests for faces.data (ImageFolder scanning, decoding, pairs, splits) and faces.transforms."""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faces.data import (
    FaceDataError,
    FaceImages,
    PathList,
    folder_fingerprint,
    load_image,
    load_images,
    make_pairs,
    merge_indices,
    scan_image_folder,
    split_identities,
)
from faces.transforms import IMAGE_SIZE, augment, normalise

PEOPLE = [f"person_{i}" for i in range(6)]


def _rgb(seed: int, size: tuple[int, int] = (112, 112)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.fixture()
def faces(tmp_path: Path) -> Path:
    """6 people x 4 RGB JPEGs, one 92x112 grey PNG person ('grey', 2 images), one single-image
    person ('zz_single'), plus a non-image file and a hidden folder that must be ignored."""
    root = tmp_path / "faces"
    # created in non-sorted order on purpose
    for p, person in reversed(list(enumerate(PEOPLE))):
        (root / person).mkdir(parents=True)
        for k in range(4):
            _rgb(p * 10 + k).save(root / person / f"img_{k}.jpg", quality=90)
    (root / "grey").mkdir()
    for k in range(2):
        grey = np.tile(np.linspace(0, 255, 92, dtype=np.uint8), (112, 1))  # (H=112, W=92)
        Image.fromarray(grey, "L").save(root / "grey" / f"g_{k}.png")
    (root / "zz_single").mkdir()
    _rgb(99).save(root / "zz_single" / "only.jpg")
    (root / PEOPLE[0] / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _rgb(100).save(root / ".hidden" / "x.jpg")
    return root


# ---- scan_image_folder ---------------------------------------------------------------------


def test_scan_sorted_people_and_labels(faces: Path) -> None:
    index = scan_image_folder(faces)
    assert index.identities == ("grey", *PEOPLE, "zz_single")
    assert len(index) == 6 * 4 + 2 + 1
    assert index.labels.dtype == np.int64
    for path, label in zip(index.paths, index.labels, strict=True):
        assert path.parent.name == index.identities[label]
        assert path.suffix in {".jpg", ".png"}
    # labels are contiguous blocks in identity order, files sorted within a person
    assert list(index.labels) == sorted(index.labels)
    person1 = [p.name for p, lab in zip(index.paths, index.labels, strict=True) if lab == 2]
    assert person1 == ["img_0.jpg", "img_1.jpg", "img_2.jpg", "img_3.jpg"]
    assert index.root == faces


def test_scan_min_images_drops_small_identities(faces: Path) -> None:
    index = scan_image_folder(faces, min_images=2)
    assert "zz_single" not in index.identities
    assert index.identities == ("grey", *PEOPLE)
    assert set(index.labels.tolist()) == set(range(7))
    index = scan_image_folder(faces, min_images=3)
    assert index.identities == tuple(PEOPLE)
    assert np.bincount(index.labels).tolist() == [4] * 6


def test_scan_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FaceDataError, match="does not exist") as info:
        scan_image_folder(missing)
    assert str(missing) in str(info.value)


def test_scan_file_instead_of_folder(tmp_path: Path) -> None:
    f = tmp_path / "faces.jpg"
    _rgb(0).save(f)
    with pytest.raises(FaceDataError, match="not a folder") as info:
        scan_image_folder(f)
    assert str(f) in str(info.value)


def test_scan_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "person_without_images").mkdir(parents=True)
    with pytest.raises(FaceDataError, match="no identities") as info:
        scan_image_folder(empty)
    assert str(empty) in str(info.value)


def test_scan_everything_below_min_images(faces: Path) -> None:
    with pytest.raises(FaceDataError, match=">= 5 images"):
        scan_image_folder(faces, min_images=5)


def test_subset_relabels(faces: Path) -> None:
    index = scan_image_folder(faces)
    sub = index.subset(["person_4", "person_1"])
    assert sub.identities == ("person_4", "person_1")
    assert len(sub) == 8
    assert sorted(set(sub.labels.tolist())) == [0, 1]
    for path, label in zip(sub.paths, sub.labels, strict=True):
        assert path.parent.name == sub.identities[label]
    with pytest.raises(ValueError):
        index.subset(["nobody"])


# ---- PathList: the compact paths of an ImageFolder index ----------------------------------
ODD_NAMES = [
    "person_0/img 0.jpg",
    "Zoë Ångström/ï ü 1.jpg",
    "张伟/照片.png",
    "person_0/" + os.fsdecode(b"caf\xe9.jpg"),  # not UTF-8: surrogate-escaped, as os.listdir
    "a b/c  d.jpeg",
]


def test_pathlist_equals_tuple_of_paths() -> None:
    root = Path("/data/faces")
    old = tuple(root / n for n in ODD_NAMES)
    new = PathList.from_names(root, ODD_NAMES)
    assert len(new) == len(old) and new == old and old == tuple(new) and list(new) == list(old)
    for i in range(-len(old), len(old)):
        assert new[i] == old[i] and isinstance(new[i], Path)
        assert new[np.int64(i)] == old[i] and str(new[i]) == str(old[i])
    with pytest.raises(IndexError):
        new[len(old)]
    for s in (slice(None), slice(1, 4), slice(None, None, -1), slice(3, 1), slice(-2, None, 2)):
        assert new[s] == old[s] and isinstance(new[s], PathList)
    rows = np.array([4, 0, 0, -1, 2])
    assert new.take(rows) == tuple(old[i] for i in rows)
    assert new.take([]) == () and not new.take([]) and len(new.take(np.zeros(0, int))) == 0
    assert new.take([1, 3]).take([1]) == (old[3],)
    with pytest.raises(IndexError):
        new.take([5])
    assert old[2] in new and root / "person_0/other.jpg" not in new
    assert hash(new) == hash(old) and new != old[:-1] and new != new[1:]
    back = pickle.loads(pickle.dumps(new))
    assert back == new and back == old and isinstance(back, PathList)
    # three arrays pickled, not a Path per item
    assert len(pickle.dumps(new)) < new.nbytes() + 1000
    assert PathList.from_paths(old) == old  # any paths: absolute and relative kept whole
    assert PathList.from_paths([Path("rel/a.jpg")])[0] == Path("rel/a.jpg")


def test_pathlist_concat_keeps_each_root() -> None:
    a = PathList.from_names("/x", ["p/1.jpg", "p/2.jpg"])
    b = PathList.from_names("/y", ["q/1.jpg"])
    both = PathList.concat([a, b, a.take([1])])
    old = (Path("/x/p/1.jpg"), Path("/x/p/2.jpg"), Path("/y/q/1.jpg"), Path("/x/p/2.jpg"))
    assert both == old and both[2] == old[2] and both[::-1] == old[::-1]
    assert both.take([2, 0]) == (old[2], old[0])
    assert pickle.loads(pickle.dumps(both)) == old
    assert PathList.concat([a, a]) == tuple(a) + tuple(a)


def test_scan_paths_are_compact_and_open(tmp_path: Path) -> None:
    root = tmp_path / "odd faces"
    for k, name in enumerate(ODD_NAMES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _rgb(k).save(root / name, format="PNG" if name.endswith(".png") else "JPEG")
    index = scan_image_folder(root)
    assert isinstance(index.paths, PathList)
    people = sorted({n.split("/")[0] for n in ODD_NAMES})
    old = tuple(root / p / f for p in people for f in sorted(os.listdir(root / p)))
    assert index.paths == old and len(index) == len(ODD_NAMES)
    for path, label in zip(index.paths, index.labels, strict=True):
        assert path.is_file() and path.parent.name == index.identities[label]
        assert load_image(path).shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert scan_image_folder(root).paths == index.paths  # from the manifest this time
    back = pickle.loads(pickle.dumps(index))
    assert back.paths == index.paths and back.paths[3].read_bytes() == old[3].read_bytes()
    rows = [3, 0, 3]
    assert index.take(rows).paths == tuple(old[i] for i in rows)
    sub = index.subset([people[-1], people[0]])
    assert sub.paths == tuple(p for p in old if p.parent.name in (people[-1], people[0]))
    merged = merge_indices([index, scan_image_folder(root).take([0])])
    assert merged.paths == old + (old[0],) and len(merged) == len(old) + 1


# ---- decoding ------------------------------------------------------------------------------


def test_load_image_rgb(faces: Path) -> None:
    arr = load_image(faces / "person_0" / "img_0.jpg")
    assert arr.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert arr.dtype == np.uint8
    assert arr.flags["C_CONTIGUOUS"]
    # channels first: equal to the HWC decode transposed
    with Image.open(faces / "person_0" / "img_0.jpg") as im:
        hwc = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(arr, hwc.transpose(2, 0, 1))


def test_load_image_grey_is_replicated_and_resized(faces: Path) -> None:
    arr = load_image(faces / "grey" / "g_0.png")
    assert arr.shape == (3, 112, 112)
    np.testing.assert_array_equal(arr[0], arr[1])
    np.testing.assert_array_equal(arr[0], arr[2])
    # the horizontal ramp survives the 92 -> 112 resize
    row = arr[0, 50].astype(int)
    assert row[0] < 10 and row[-1] > 245
    assert np.all(np.diff(row) >= 0)
    assert load_image(faces / "grey" / "g_0.png", size=64).shape == (3, 64, 64)


def test_load_image_truncated_jpeg(faces: Path) -> None:
    good = (faces / "person_0" / "img_0.jpg").read_bytes()
    bad = faces / "person_0" / "broken.jpg"
    bad.write_bytes(good[: len(good) // 3])
    with pytest.raises(FaceDataError) as info:
        load_image(bad)
    assert str(bad) in str(info.value)


def test_load_image_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.jpg"
    bad.write_bytes(b"this is not a jpeg at all" * 10)
    with pytest.raises(FaceDataError) as info:
        load_image(bad)
    assert str(bad) in str(info.value)


def test_load_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FaceDataError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")


def test_load_images_and_dataset(faces: Path) -> None:
    index = scan_image_folder(faces, min_images=3).subset(["person_2", "person_5"])
    seen: list[int] = []
    batch = load_images(index.paths, progress=seen.append)
    assert batch.shape == (8, 3, 112, 112) and batch.dtype == torch.uint8
    assert seen == list(range(8))
    np.testing.assert_array_equal(batch[5].numpy(), load_image(index.paths[5]))
    ds = FaceImages(index)
    assert len(ds) == 8
    img, label = ds[6]
    assert torch.equal(img, batch[6])
    assert int(label) == 1


# ---- pairs ---------------------------------------------------------------------------------


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def _raise(_signum, _frame):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _labels() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.permutation(np.repeat(np.arange(12), 6))  # 12 people x 6 images, shuffled


def test_make_pairs_balanced_valid_unique() -> None:
    labels = _labels()
    pairs = make_pairs(labels, 200, seed=0)
    assert pairs.shape == (200, 3) and pairs.dtype == np.int64
    same = pairs[:, 2]
    assert same.sum() == 100
    # alternating genuine/impostor
    assert same[0::2].tolist() == [1] * 100 and same[1::2].tolist() == [0] * 100
    i, j = pairs[:, 0], pairs[:, 1]
    assert np.all(i < j)
    assert np.all((labels[i] == labels[j]) == (same == 1))
    assert len({(a, b) for a, b in zip(i.tolist(), j.tolist(), strict=True)}) == len(pairs)
    assert i.min() >= 0 and j.max() < len(labels)


@pytest.mark.parametrize("n_pairs", [20, 60, 200])
def test_make_pairs_every_fold_has_both_kinds(n_pairs: int) -> None:
    pairs = make_pairs(_labels(), n_pairs, seed=1)
    for fold in np.array_split(pairs, 10):
        assert set(fold[:, 2].tolist()) == {0, 1}


def test_make_pairs_deterministic() -> None:
    labels = _labels()
    a = make_pairs(labels, 100, seed=7)
    np.testing.assert_array_equal(a, make_pairs(labels, 100, seed=7))
    assert not np.array_equal(a, make_pairs(labels, 100, seed=8))


def test_make_pairs_capped_by_available_genuine_pairs() -> None:
    labels = np.array([0, 0, 1, 1, 2])  # only 2 genuine pairs exist
    with _time_limit(10):
        pairs = make_pairs(labels, 100, seed=0)
    assert pairs.shape == (4, 3)
    assert pairs[:, 2].tolist() == [1, 0, 1, 0]


def test_make_pairs_capped_by_available_impostor_pairs() -> None:
    # one large identity: 190 genuine pairs are possible but only 20 * 2 = 40 impostor pairs
    labels = np.array([0] * 20 + [1] * 2)
    with _time_limit(10):
        pairs = make_pairs(labels, 200, seed=0)
    same = pairs[:, 2]
    assert same.sum() == (len(same) - same.sum()) == 40
    assert np.all((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == (same == 1))


def test_make_pairs_needs_two_images_of_someone() -> None:
    with pytest.raises(FaceDataError, match="two images"):
        make_pairs(np.arange(10), 20, seed=0)


def test_make_pairs_needs_two_identities() -> None:
    with pytest.raises(FaceDataError, match="one identity"):
        make_pairs(np.zeros(10, dtype=np.int64), 20, seed=0)


# ---- split_identities ----------------------------------------------------------------------


def test_split_identities_disjoint_and_deterministic(faces: Path) -> None:
    index = scan_image_folder(faces)  # 8 identities
    train, ev = split_identities(index, 0.25, seed=0)
    assert set(train).isdisjoint(ev)
    assert set(train) | set(ev) == set(index.identities)
    assert len(ev) == 2 and len(train) == 6
    assert train == sorted(train) and ev == sorted(ev)
    assert split_identities(index, 0.25, seed=0) == (train, ev)
    splits = {tuple(split_identities(index, 0.5, seed=s)[1]) for s in range(6)}
    assert len(splits) > 1  # the seed matters
    assert all(len(s) == 4 for s in splits)


def test_split_identities_errors(faces: Path) -> None:
    index = scan_image_folder(faces)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="eval_fraction"):
            split_identities(index, bad, seed=0)
    tiny = index.subset(["person_0", "person_1"])
    with pytest.raises(FaceDataError, match="too few identities"):
        split_identities(tiny, 0.5, seed=0)


# ---- fingerprint ---------------------------------------------------------------------------


def test_folder_fingerprint_tracks_changes(faces: Path) -> None:
    fp = folder_fingerprint(faces)
    assert fp == folder_fingerprint(faces)
    assert len(fp) == 64

    _rgb(500).save(faces / "person_3" / "img_9.jpg")
    added = folder_fingerprint(faces)
    assert added != fp

    target = faces / "person_3" / "img_9.jpg"
    st = target.stat()
    target.write_bytes(target.read_bytes()[:-1] + b"\0")  # same size, new content
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    modified = folder_fingerprint(faces)
    assert modified != added

    target.unlink()
    assert folder_fingerprint(faces) != modified


def test_folder_fingerprint_differs_between_folders(tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 2)):
        (tmp_path / name / "p").mkdir(parents=True)
        _rgb(seed).save(tmp_path / name / "p" / "x.jpg")
    (tmp_path / "b" / "p" / "x.jpg").rename(tmp_path / "b" / "p" / "y.jpg")
    assert folder_fingerprint(tmp_path / "a") != folder_fingerprint(tmp_path / "b")


# ---- transforms ----------------------------------------------------------------------------


def test_augment_shape_dtype_and_changes() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 112, 112), dtype=torch.uint8, generator=g)
    before = images.clone()
    out = augment(images, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(images, before)  # input untouched
    changed = [not torch.equal(out[i], images[i]) for i in range(8)]
    assert all(changed)
    again = augment(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, augment(images, generator=torch.Generator().manual_seed(2)))


def test_augment_keeps_constant_image_roughly_constant() -> None:
    images = torch.full((4, 3, 32, 32), 100, dtype=torch.uint8)
    out = augment(images, generator=torch.Generator().manual_seed(0))
    # shift/flip do nothing to a flat image; brightness stays within +-15%
    for img in out:
        assert img.unique().numel() == 1
        assert 85 <= int(img.flatten()[0]) <= 115


def test_normalise() -> None:
    t = normalise(torch.tensor([127.5, 255.0, 0.0]))
    assert t.dtype == torch.float32
    torch.testing.assert_close(t, torch.tensor([0.0, 127.5 / 128, -127.5 / 128]))
    assert abs(float(t[1]) - 0.996) < 1e-3
    u = normalise(np.array([[0, 255]], dtype=np.uint8))
    assert u.dtype == torch.float32
    torch.testing.assert_close(u, torch.tensor([[-127.5 / 128, 127.5 / 128]]))
