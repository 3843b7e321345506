"""InsightFace RecordIO sets without mxnet: layout, reading, loaders, errors."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from faces.data import FaceDataError
from faces.recordio import (
    MAGIC,
    IRHeader,
    RecordIOFaces,
    encode_record,
    main,
    pack,
    read_index,
    unpack,
    write_recordio,
)

LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2]  # 3 identities, contiguous


def _png(value: int, size: int = 112) -> bytes:
    """A lossless image whose pixels identify it: R = value, G = row, B = 7."""
    arr = np.zeros((size, size, 3), np.uint8)
    arr[..., 0] = value
    arr[..., 1] = np.arange(size, dtype=np.uint8)[:, None]
    arr[..., 2] = 7
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def recset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rec")
    write_recordio(root, [(_png(10 * i + 5), lab) for i, lab in enumerate(LABELS)])
    return root


def _hand_record(payload: bytes) -> bytes:
    """magic, lrecord (cflag 0), data, zero padding: a record without magic inside."""
    pad = b"\0" * (-len(payload) % 4)
    return struct.pack("<II", 0xCED7230A, len(payload)) + payload + pad


def test_layout_matches_hand_packed_record(recset: Path) -> None:
    img = _png(5)
    hand = _hand_record(struct.pack("<IfQQ", 0, 0.0, 1, 0) + img)  # key 1, label 0, flag 0
    rec = (recset / "train.rec").read_bytes()
    assert rec[: len(hand)] == hand
    assert len(hand) % 4 == 0
    idx = (recset / "train.idx").read_text().splitlines()
    assert idx[0] == "1\t0"
    assert idx[1] == f"2\t{len(hand)}"
    # images 1..9, header 0, identities 10..12, in write order like MXIndexedRecordIO
    assert [int(line.split("\t")[0]) for line in idx] == [*range(1, 10), 0, 10, 11, 12]
    assert (recset / "property").read_text() == "3,112,112\n"


def test_header_record_and_identity_ranges(recset: Path) -> None:
    keys, offsets = read_index(recset / "train.idx")
    rec = (recset / "train.rec").read_bytes()
    at = int(offsets[list(keys).index(0)])
    magic, lrec = struct.unpack_from("<II", rec, at)
    assert magic == MAGIC and lrec >> 29 == 0
    header, payload = unpack(rec[at + 8 : at + 8 + (lrec & (2**29 - 1))])
    assert header.flag == 2 and header.id == 0 and payload == b""
    assert header.label.tolist() == [10.0, 13.0]  # (first identity key, end)
    ds = RecordIOFaces(recset)
    assert ds.header0 == (10, 13)
    assert ds.identity_ranges == [(1, 4), (4, 6), (6, 10)]
    assert ds.num_classes == 3


def test_read_back_images_and_labels(recset: Path) -> None:
    ds = RecordIOFaces(recset)
    assert len(ds) == len(LABELS)
    assert ds.labels.tolist() == LABELS
    for i in (0, 4, 8):
        image, label = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
        assert label == LABELS[i] and isinstance(label, int)
        assert int(image[0, 0, 0]) == 10 * i + 5 and int(image[1, 50, 0]) == 50
        assert int(image[2, 3, 3]) == 7


def test_pack_unpack_roundtrip_and_magic_inside_data() -> None:
    h, data = unpack(pack(IRHeader(0, [3.0, 1.0], 42, 0), b"xyz"))
    assert h.flag == 2 and h.label.tolist() == [3.0, 1.0] and h.id == 42 and data == b"xyz"
    h, data = unpack(pack(IRHeader(9, 7, 1, 0), b"abc"))
    assert h.flag == 0 and h.label == 7.0 and data == b"abc"
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"ij"  # aligned magics split the record
    enc = encode_record(payload)
    cflags = []
    pos = 0
    while pos < len(enc):
        m, lrec = struct.unpack_from("<II", enc, pos)
        assert m == MAGIC
        cflags.append(lrec >> 29)
        pos += 8 + ((lrec & (2**29 - 1)) + 3) // 4 * 4
    assert cflags == [1, 2, 3]
    assert encode_record(b"ab" + magic + b"cc") == _hand_record(b"ab" + magic + b"cc")


def test_records_with_magic_inside_read_back(tmp_path: Path) -> None:
    magic = struct.pack("<I", MAGIC)
    # header is 24 bytes: the magic lands 4-byte aligned inside the record data
    blob = _png(1) + b"\0" * (-len(_png(1)) % 4) + magic * 2 + b"tail"
    write_recordio(tmp_path, [(blob, 0), (_png(2), 1)])
    ds = RecordIOFaces(tmp_path)
    assert unpack(ds.read_record(1))[1] == blob
    assert ds.labels.tolist() == [0, 1]
    assert int(ds[0][0][0, 0, 0]) == 1  # PNG decoders ignore trailing bytes


def test_dataloader_with_two_workers(recset: Path) -> None:
    ds = RecordIOFaces(recset)
    _ = ds[0]  # the parent has an open handle: workers must not share it
    pickle.dumps(ds)  # no file handle is pickled
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    labels = torch.cat([lab for _, lab in loader]).tolist()
    firsts = torch.cat([img[:, 0, 0, 0] for img, _ in loader]).tolist()
    assert labels == LABELS
    assert firsts == [10 * i + 5 for i in range(len(LABELS))]


def test_distributed_sampler_splits_indices(recset: Path) -> None:
    ds = RecordIOFaces(recset)
    parts = [
        list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=3, drop_last=True))
        for r in (0, 1)
    ]
    assert len(parts[0]) == len(parts[1]) == len(ds) // 2
    assert not set(parts[0]) & set(parts[1])
    every = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(set(every[0]) | set(every[1])) == list(range(len(ds)))
    assert [ds[i][1] for i in every[1]] == [LABELS[i] for i in every[1]]


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_missing_files(tmp_path: Path, recset: Path) -> None:
    with pytest.raises(FaceDataError, match="does not exist"):
        RecordIOFaces(tmp_path / "nope")
    root = _copy(recset, tmp_path / "noidx")
    (root / "train.idx").unlink()
    with pytest.raises(FaceDataError, match=r"train\.idx does not exist"):
        RecordIOFaces(root)


def test_truncated_rec_names_file_and_record(tmp_path: Path, recset: Path) -> None:
    root = _copy(recset, tmp_path / "trunc")
    keys, offsets = read_index(root / "train.idx")
    rec = (root / "train.rec").read_bytes()
    cut = int(offsets[4]) + 100  # inside image record 5
    (root / "train.rec").write_bytes(rec[:cut])
    # the header and identity records now lie past the end: found when the index is read
    with pytest.raises(FaceDataError, match=r"train\.idx.*past the end of .*train\.rec"):
        RecordIOFaces(root)
    (root / "train.rec").write_bytes(rec[: int(offsets[-1]) + 12])  # inside the last record
    with pytest.raises(FaceDataError, match=r"train\.rec is truncated: record 12 at offset"):
        RecordIOFaces(root)
    (root / "train.rec").write_bytes(rec[:cut])
    ds = RecordIOFaces(recset)
    ds.rec_path = root / "train.rec"  # read the truncated file through an intact index
    ds.close()
    with pytest.raises(FaceDataError, match=r"train\.rec is truncated: record 5 at offset \d+"):
        ds[4]


def test_corrupt_index_errors(tmp_path: Path, recset: Path) -> None:
    root = _copy(recset, tmp_path / "badidx")
    lines = (root / "train.idx").read_text().splitlines()
    lines[2] = "3\t6"  # not the start of a record
    (root / "train.idx").write_text("\n".join(lines) + "\n")
    ds = RecordIOFaces(root)
    with pytest.raises(
        FaceDataError, match=r"train\.rec: bad magic 0x[0-9a-f]+ at byte 6 \(record 3"
    ):
        ds[2]
    lines[2] = "3\t99999999"
    (root / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(FaceDataError, match=r"train\.idx: record 3 at offset 99999999 is past"):
        RecordIOFaces(root)
    (root / "train.idx").write_text("1\tzero\n")
    with pytest.raises(FaceDataError, match=r"train\.idx line 1"):
        RecordIOFaces(root)


def test_undecodable_image(tmp_path: Path) -> None:
    write_recordio(tmp_path, [(b"not an image at all", 0), (_png(3), 0)])
    ds = RecordIOFaces(tmp_path)
    with pytest.raises(FaceDataError, match=r"train\.rec: cannot decode the image of record 1"):
        ds[0]
    assert ds[1][1] == 0


def test_set_without_header_record(tmp_path: Path) -> None:
    """A plain im2rec set (record 0 is an image, not a header): every record is an image."""
    with open(tmp_path / "train.rec", "wb") as rec, open(tmp_path / "train.idx", "w") as idx:
        for key, label in ((0, 2), (5, 1), (6, 0)):
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(encode_record(pack(IRHeader(0, [float(label), 1.0], key, 0), _png(key))))
    ds = RecordIOFaces(tmp_path)
    assert ds.labels.tolist() == [2, 1, 0] and ds.num_classes == 3 and ds.header0 is None
    assert int(ds[2][0][0, 0, 0]) == 6 and ds[0][1] == 2


def test_pack_cli_from_image_folder(tmp_path: Path) -> None:
    for person, values in (("alice", (1, 2)), ("bob", (3,))):
        (tmp_path / "faces" / person).mkdir(parents=True)
        for v in values:
            Image.new("RGB", (100, 90), (v * 20, 0, 0)).save(
                tmp_path / "faces" / person / f"{v}.png"
            )
    assert main(["pack", str(tmp_path / "faces"), str(tmp_path / "out")]) == 0
    ds = RecordIOFaces(tmp_path / "out")
    assert ds.labels.tolist() == [0, 0, 1]
    assert [int(ds[i][0][0, 50, 50]) for i in range(3)] == pytest.approx([20, 40, 60], abs=3)


def test_header_without_identity_records_reads_image_labels(
    tmp_path: Path, recset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Written by tools that set only the header: labels come from the image records."""
    root = _copy(recset, tmp_path / "headeronly")
    lines = (root / "train.idx").read_text().splitlines()
    images_and_header = [line for line in lines if int(line.split("\t")[0]) < 10]
    (root / "train.idx").write_text("\n".join(images_and_header) + "\n")
    ds = RecordIOFaces(root)
    warning = capsys.readouterr().out
    assert warning.startswith("warning: RecordIO index") and str(root / "train.idx") in warning
    assert "lacks all 3 identity records (keys 10..12)" in warning and "image records" in warning
    assert ds.header0 == (10, 13) and ds.labels.tolist() == LABELS
    assert len(ds) == len(LABELS) and ds.identity_ranges == []
    # some identity records present and others absent: still broken
    (root / "train.idx").write_text("\n".join([*images_and_header, lines[-1]]) + "\n")
    with pytest.raises(FaceDataError, match=r"lacks 2 identity record\(s\) that header record 0"):
        RecordIOFaces(root)
    # the announced image records must all be there
    without_image = [line for line in images_and_header if not line.startswith("4\t")]
    (root / "train.idx").write_text("\n".join(without_image) + "\n")
    with pytest.raises(FaceDataError, match=r"lacks 1 image record\(s\)"):
        RecordIOFaces(root)
