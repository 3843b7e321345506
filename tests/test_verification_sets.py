"""Verification sets: InsightFace .bin (safely unpickled), LFW pairs.txt, ImageFolder pairs."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faces.data import FaceDataError
from faces.verification_sets import (
    load_bin,
    load_verification_set,
    parse_pairs_txt,
    write_bin,
)


def _jpeg(value: int, size: int = 112) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, 40)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_write_bin_and_read_back(tmp_path: Path) -> None:
    pairs = [(_jpeg(10), _jpeg(20)), (_jpeg(30), _jpeg(40, size=96)), (_jpeg(50), _jpeg(60))]
    path = write_bin(tmp_path / "tiny.bin", pairs, [True, False, True])
    vs = load_bin(path)
    assert vs.name == "tiny"
    assert vs.images.shape == (6, 3, 112, 112) and str(vs.images.dtype) == "torch.uint8"
    assert vs.pairs.dtype == np.int64
    assert vs.pairs.tolist() == [[0, 1, 1], [2, 3, 0], [4, 5, 1]]
    assert abs(int(vs.images[3, 0, 50, 50]) - 40) <= 3  # resized from 96 px
    assert load_verification_set(str(path)).pairs.tolist() == vs.pairs.tolist()
    a, b, c = _jpeg(1), _jpeg(2), _jpeg(3)
    dup = load_bin(write_bin(tmp_path / "dup.bin", [(a, b), (a, c), (c, b)], [1, 0, 0]))
    assert len(dup.images) == 3  # each distinct image decoded once
    assert dup.pairs.tolist() == [[0, 1, 1], [0, 2, 0], [2, 1, 0]]


def _py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's pickle.dump(..., protocol=2) writes: str items as BINSTRING opcodes."""
    out = bytearray(b"\x80\x02]q\x00(")
    for b in bins:
        out += b"T" + struct.pack("<I", len(b)) + b
    out += b"e]q\x01("
    out += b"".join(b"\x88" if s else b"\x89" for s in issame)
    out += b"e\x86q\x02."
    return bytes(out)


def test_python2_bin_and_numpy_issame(tmp_path: Path) -> None:
    py2 = tmp_path / "py2.bin"
    py2.write_bytes(_py2_pickle([_jpeg(0), _jpeg(200)], [False]))
    vs = load_bin(py2)
    assert vs.pairs.tolist() == [[0, 1, 0]] and int(vs.images[1, 0, 5, 5]) > 190
    np_bin = tmp_path / "np.bin"
    with open(np_bin, "wb") as f:  # issame as a numpy bool array / list of numpy bools
        pickle.dump(([_jpeg(1), _jpeg(2)] * 2, np.array([True, False])), f, protocol=2)
    assert load_bin(np_bin).pairs[:, 2].tolist() == [1, 0]
    with open(np_bin, "wb") as f:
        pickle.dump(([_jpeg(1), _jpeg(2)], [np.bool_(True)]), f, protocol=4)
    assert load_bin(np_bin).pairs[:, 2].tolist() == [1]
    with open(np_bin, "wb") as f:  # pickle.HIGHEST_PROTOCOL (5): numpy's _frombuffer
        pickle.dump(([_jpeg(1), _jpeg(2)] * 2, np.array([False, True])), f, protocol=5)
    assert load_bin(np_bin).pairs[:, 2].tolist() == [0, 1]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class _NewArray:
    def __reduce__(self) -> tuple:
        return (np.ndarray, ((1,), "O"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "lfw.bin"
    with open(evil, "wb") as f:
        pickle.dump(([_jpeg(1), _Evil(marker)], [True]), f, protocol=4)
    with pytest.raises(FaceDataError, match=r"lfw\.bin: refused global (posix|os)\.system"):
        load_bin(evil)
    assert not marker.exists()
    with open(evil, "wb") as f:  # an object-dtype array would smuggle more pickled objects
        pickle.dump(([b"x", b"y"], np.array([True], dtype=object)), f, protocol=2)
    with pytest.raises(FaceDataError, match="objects are not allowed"):
        load_bin(evil)
    with open(evil, "wb") as f:  # numpy.ndarray itself is not callable from the pickle
        pickle.dump(([b"x", b"y"], _NewArray()), f, protocol=2)
    with pytest.raises(FaceDataError, match="not a verification .bin pickle"):
        load_bin(evil)
    evil.write_bytes(b"c__builtin__\neval\n(S'1+1'\ntR.")  # protocol 0, classic payload
    with pytest.raises(FaceDataError, match=r"refused global __builtin__\.eval"):
        load_bin(evil)


def test_bad_bin_files(tmp_path: Path) -> None:
    with pytest.raises(FaceDataError, match="does not exist"):
        load_bin(tmp_path / "missing.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(FaceDataError, match=r"bad\.bin is not a verification \.bin pickle"):
        load_bin(bad)
    write_bin(bad, [(_jpeg(1), _jpeg(2))], [True])
    data = pickle.loads(bad.read_bytes())
    bad.write_bytes(pickle.dumps((data[0][:1], data[1])))
    with pytest.raises(FaceDataError, match="1 pairs need 2 images, the file holds 1"):
        load_bin(bad)
    bad.write_bytes(pickle.dumps(([b"nope", _jpeg(3)], [True])))
    with pytest.raises(FaceDataError, match=r"cannot decode image 0 of .*bad\.bin"):
        load_bin(bad)


def _lfw_tree(root: Path) -> None:
    for person, (name, n) in enumerate((("Ann_A", 3), ("Bob_B", 2), ("Cid_C", 1))):
        (root / name).mkdir(parents=True)
        for k in range(1, n + 1):  # distinct content: images are pooled by their bytes
            colour = (k * 30, person * 60, 0)
            Image.new("RGB", (112, 112), colour).save(root / name / f"{name}_{k:04d}.jpg")


PAIR_LINES = [
    "Ann_A\t1\t2",
    "Bob_B\t1\t2",
    "Ann_A\t1\tCid_C\t1",
    "Bob_B\t2\tCid_C\t1",
    "Ann_A\t2\t3",
    "Ann_A\t3\tBob_B\t1",
]


def test_pairs_txt_with_and_without_header(tmp_path: Path) -> None:
    _lfw_tree(tmp_path / "lfw")
    with_header = tmp_path / "pairs.txt"
    # 3 folds of 1 matched + 1 mismatched pair each
    folds = [PAIR_LINES[0], PAIR_LINES[2], PAIR_LINES[1], PAIR_LINES[3], PAIR_LINES[4]]
    folds.append(PAIR_LINES[5])
    with_header.write_text("3\t1\n" + "\n".join(folds) + "\n")
    bare = tmp_path / "pairs_bare.txt"
    bare.write_text("\n".join(folds).replace("\t", " ") + "\n")
    a = load_verification_set(tmp_path / "lfw", pairs_file=with_header)
    b = load_verification_set(str(tmp_path / "lfw"), pairs_file=str(bare))
    assert a.name == "lfw"
    assert a.pairs.tolist() == b.pairs.tolist()
    assert a.pairs[:, 2].tolist() == [1, 0, 1, 0, 1, 0]  # file (fold) order kept
    assert len(a.images) == 6  # Ann 1-3, Bob 1-2, Cid 1: each decoded once
    first = a.pairs[0]
    assert int(a.images[first[0], 0, 9, 9]) == pytest.approx(30, abs=3)
    assert int(a.images[first[1], 0, 9, 9]) == pytest.approx(60, abs=3)
    assert parse_pairs_txt(with_header)[2].a == ("Bob_B", 1)


def test_pairs_txt_errors(tmp_path: Path) -> None:
    _lfw_tree(tmp_path / "lfw")
    p = tmp_path / "pairs.txt"
    p.write_text("10\t300\n" + "\n".join(PAIR_LINES) + "\n")
    with pytest.raises(FaceDataError, match="header announces 6000 pairs, the file holds 6"):
        parse_pairs_txt(p)
    p.write_text("Ann_A\t1\t9\n")
    with pytest.raises(FaceDataError, match=r"Ann_A_0009\.jpg, which does not exist"):
        load_verification_set(tmp_path / "lfw", pairs_file=p)
    p.write_text("Ann_A\tone\t2\n")
    with pytest.raises(FaceDataError, match="line 1: expected"):
        parse_pairs_txt(p)


def test_image_folder_set_is_deterministic(tmp_path: Path) -> None:
    from faces.synthetic import write_synthetic_faces

    root = write_synthetic_faces(tmp_path / "syn", 6, 4, seed=1)
    a = load_verification_set(root, n_pairs=40, seed=0)
    b = load_verification_set(str(root), n_pairs=40, seed=0)
    c = load_verification_set(root, n_pairs=40, seed=1)
    assert a.name == "syn"
    assert a.pairs.tolist() == b.pairs.tolist()
    assert np.array_equal(a.images.numpy(), b.images.numpy())
    assert a.pairs.tolist() != c.pairs.tolist()
    assert len(a.pairs) == 40 and a.pairs[:, 2].sum() == 20
    assert a.pairs[:, :2].max() == len(a.images) - 1  # only images in pairs are decoded
    with pytest.raises(FaceDataError, match="does not exist"):
        load_verification_set(tmp_path / "nothing")
