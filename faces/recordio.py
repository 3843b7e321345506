"""InsightFace MXNet RecordIO training sets (``train.rec``, ``train.idx``, ``property``), no mxnet.

The layout follows dmlc-core's ``RecordIOWriter`` / ``RecordIOReader`` (``src/recordio.cc``) and
``mxnet.recordio`` (``MXIndexedRecordIO``, ``pack``, ``unpack``), as used for MS1M-V2/V3,
Glint360K and CASIA-WebFace (``faces_webface_112x112``):

* ``train.rec`` is a sequence of records. Every record is ``uint32 magic = 0xced7230a``,
  ``uint32 lrecord`` (upper 3 bits: continuation flag ``cflag``, lower 29 bits: length), the
  data, and zero padding to a multiple of 4 bytes. When the data holds the magic number at a
  4-byte aligned position, the writer splits it there into parts (``cflag`` 1 = first,
  2 = middle, 3 = last; 0 = a whole record) and drops that magic; the reader puts it back.
* ``train.idx`` holds one line ``key<TAB>byte_offset`` per record, in write order.
* The data of an image record is ``IRHeader`` (struct ``<IfQQ``: flag, label, id, id2); when
  ``flag > 0``, ``flag`` float32 labels follow (then ``label`` is 0), then the encoded image.
* InsightFace's sets (``face2rec2.py``) write the images as keys ``1..N`` (identities
  contiguous), then a header record with key 0 whose labels are ``(N + 1, N + 1 + K)``, then one
  record per identity, keys ``N + 1 .. N + K``, whose labels are that identity's image key range
  ``(start, end)``. Readers (``arcface_torch/dataset.py`` ``MXFaceDataset``) take images
  ``1 .. header0.label[0] - 1`` and the class of an image as ``label`` or ``label[0]``. Here
  record 0 counts as that header when it has >= 2 labels and no image; otherwise (a plain
  ``im2rec`` set) every indexed record is an image.
* ``property`` is one line ``num_classes,height,width``.

Command line (ImageFolder -> RecordIO)::

    python -m faces.recordio pack IMAGEFOLDER OUT
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from faces.data import FaceDataError
from faces.transforms import IMAGE_SIZE

__all__ = [
    "MAGIC",
    "IRHeader",
    "RecordIOFaces",
    "encode_record",
    "main",
    "pack",
    "read_index",
    "read_property",
    "unpack",
    "write_recordio",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_MAX_LEN = (1 << 29) - 1


class IRHeader(NamedTuple):
    """mxnet's image record header; ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def _encode_lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", (cflag << 29) | length)


def encode_record(data: bytes) -> bytes:
    """One record as dmlc's ``RecordIOWriter::WriteRecord`` writes it (magic-splitting, padding)."""
    if len(data) > _MAX_LEN:
        raise ValueError(f"RecordIO records must be shorter than 2^29 bytes, got {len(data)}")
    out = bytearray()
    dptr = 0
    i = data.find(_MAGIC_BYTES)
    while i != -1:  # every 4-byte aligned occurrence of the magic splits the record
        if i % 4:
            i = data.find(_MAGIC_BYTES, i + 1)
            continue
        out += _MAGIC_BYTES + _encode_lrec(1 if dptr == 0 else 2, i - dptr) + data[dptr:i]
        dptr = i + 4
        i = data.find(_MAGIC_BYTES, dptr)
    out += _MAGIC_BYTES + _encode_lrec(3 if dptr else 0, len(data) - dptr) + data[dptr:]
    out += b"\0" * (-len(data) % 4)
    return bytes(out)


def pack(header: IRHeader | Sequence[Any], data: bytes) -> bytes:
    """``mxnet.recordio.pack``: a scalar label sets ``flag = 0``; an array label is prepended."""
    _flag, label, id_, id2 = header  # like mxnet, the flag follows from the label
    if isinstance(label, int | float | np.number):
        return struct.pack(_IR_FORMAT, 0, float(label), id_, id2) + data
    arr = np.asarray(label, dtype="<f4").ravel()
    return struct.pack(_IR_FORMAT, arr.size, 0.0, id_, id2) + arr.tobytes() + data


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """``mxnet.recordio.unpack``: header (float32 label array when ``flag > 0``) and payload."""
    if len(record) < _IR_SIZE:
        raise ValueError(
            f"record of {len(record)} bytes is shorter than the {_IR_SIZE}-byte header"
        )
    flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, record)
    rest = record[_IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise ValueError(
                f"record header announces {flag} labels, only {len(rest)} bytes follow"
            )
        return IRHeader(flag, np.frombuffer(rest, "<f4", flag).copy(), id_, id2), rest[4 * flag :]
    return IRHeader(flag, label, id_, id2), rest


def _class_label(header: IRHeader) -> int:
    """The class of an image record, as ``MXFaceDataset`` takes it (``label`` or ``label[0]``)."""
    label = header.label
    return int(label[0]) if isinstance(label, np.ndarray) else int(label)


def _read_index_fast(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``train.idx`` parsed in C (pandas): no Python int per line, so opening an index of
    millions of records costs neither seconds nor a transient peak of memory. None when a
    line is malformed (the line-by-line reader then names it)."""
    import pandas as pd

    try:
        table = pd.read_csv(
            path,
            sep="\t",
            header=None,
            names=["key", "offset"],
            dtype=np.int64,
            engine="c",
            skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if table.shape[1] != 2 or table.empty:
        return None
    return table["key"].to_numpy(), table["offset"].to_numpy()


def read_index(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``train.idx`` as (keys, byte offsets), int64, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FaceDataError(f"RecordIO index {path} does not exist")
    fast = _read_index_fast(path)
    if fast is not None:
        return fast
    keys: list[int] = []
    offsets: list[int] = []
    with open(path, encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split("\t")
            try:
                if len(parts) != 2:
                    raise ValueError
                keys.append(int(parts[0]))
                offsets.append(int(parts[1]))
            except ValueError:
                raise FaceDataError(
                    f"RecordIO index {path} line {lineno}: expected 'key<TAB>offset', "
                    f"got {line.strip()[:80]!r}"
                ) from None
    if not keys:
        raise FaceDataError(f"RecordIO index {path} is empty")
    return np.array(keys, dtype=np.int64), np.array(offsets, dtype=np.int64)


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """``property`` as (num_classes, height, width)."""
    path = Path(path)
    if not path.is_file():
        raise FaceDataError(f"RecordIO property file {path} does not exist")
    text = path.read_text(errors="replace").strip()
    try:
        num, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise FaceDataError(
            f"RecordIO property file {path}: expected 'num_classes,height,width', got {text[:80]!r}"
        ) from None
    return num, h, w


class RecordIOFaces(Dataset):
    """An InsightFace ``train.rec``/``train.idx`` set as (uint8 RGB (3, size, size), int label).

    Random access through the index; the record file is opened lazily in each process (a
    DataLoader worker reopens it, no file handle is pickled), so it works with any number of
    workers and with ``DistributedSampler``. ``labels`` (int64, one per image) comes from the
    identity records when the set has them (one read per identity), else from every image's
    header. ``property`` is optional: ``num_classes`` falls back to ``max(label) + 1``.
    """

    def __init__(self, root: str | os.PathLike, size: int = IMAGE_SIZE) -> None:
        self.root = Path(root)
        self.size = size
        if not self.root.is_dir():
            raise FaceDataError(f"RecordIO folder {self.root} does not exist")
        self.rec_path = self.root / "train.rec"
        self.idx_path = self.root / "train.idx"
        if not self.rec_path.is_file():
            raise FaceDataError(f"RecordIO file {self.rec_path} does not exist")
        self._file: tuple[int, int] | None = None  # (descriptor, size) of this process
        self._pid: int | None = None
        self.file_size = self.rec_path.stat().st_size
        keys, offsets = read_index(self.idx_path)
        past = offsets >= self.file_size
        if past.any() or (offsets < 0).any():
            i = int(np.flatnonzero(past | (offsets < 0))[0])
            raise FaceDataError(
                f"RecordIO index {self.idx_path}: record {int(keys[i])} at offset "
                f"{int(offsets[i])} is past the end of {self.rec_path} ({self.file_size} bytes)"
            )
        # numpy, not a dict: millions of Python ints would be copied into every worker
        order = np.argsort(keys, kind="stable")
        self._sorted_keys = keys[order]
        self._sorted_offsets = offsets[order]
        self.header0: tuple[int, int] | None = None
        self.identity_ranges: list[tuple[int, int]] = []
        header, payload = self._unpack(0) if self._offset(0) is not None else (None, b"")
        # InsightFace's header record: >= 2 labels and no image (MXFaceDataset only checks flag)
        if header is not None and header.flag >= 2 and not payload:
            start, end = int(header.label[0]), int(header.label[1])
            self.header0 = (start, end)
            self.keys = np.arange(1, start, dtype=np.int64)
            self._check_keys(self.keys, "image")
            self.labels = self._labels_from_identities(start, end)
        else:
            self.keys = keys  # a plain im2rec set: record 0, if any, is an image too
            self.labels = np.array(
                [_class_label(self.read_header(int(k))) for k in self.keys], dtype=np.int64
            )
        prop = self.root / "property"
        if prop.is_file():
            self.num_classes, h, w = read_property(prop)
        else:
            self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
            h = w = size
        self.image_size = (h, w)

    # -- index -----------------------------------------------------------------------------
    def _offset(self, key: int) -> int | None:
        """Byte offset of record ``key``, None when the index lacks it."""
        i = int(np.searchsorted(self._sorted_keys, key))
        if i < len(self._sorted_keys) and self._sorted_keys[i] == key:
            return int(self._sorted_offsets[i])
        return None

    def _check_keys(self, keys: np.ndarray, what: str) -> None:
        missing = keys[~np.isin(keys, self._sorted_keys)]
        if len(missing):
            raise FaceDataError(
                f"RecordIO index {self.idx_path} lacks {len(missing)} {what} record(s) that "
                f"header record 0 announces (first: key {int(missing[0])})"
            )

    def _labels_from_identities(self, start: int, end: int) -> np.ndarray:
        """Class of every image from the identity records ``start..end-1`` (key ranges)."""
        n = len(self.keys)
        labels = np.full(n, -1, dtype=np.int64)
        identity_keys = np.arange(start, end, dtype=np.int64)
        if len(identity_keys) and not np.isin(identity_keys, self._sorted_keys).any():
            # only the header was written (MXFaceDataset never reads identity records): every
            # image record carries its class; some present and some absent stays an error
            # on standard output, like facekd's other data warnings (Python warnings go to
            # the log file of a quiet terminal)
            print(
                f"warning: RecordIO index {self.idx_path} lacks all {len(identity_keys)} "
                f"identity records (keys {start}..{end - 1}) that header record 0 announces; "
                "labels are read from the image records instead",
                flush=True,
            )
            return np.array(
                [_class_label(self.read_header(int(k))) for k in self.keys], dtype=np.int64
            )
        self._check_keys(identity_keys, "identity")
        for k in identity_keys:
            h = self.read_header(int(k))
            if not isinstance(h.label, np.ndarray) or h.label.size < 2:
                raise FaceDataError(
                    f"{self.rec_path}: identity record {int(k)} has no (start, end) label pair"
                )
            a, b = int(h.label[0]), int(h.label[1])
            if not 1 <= a < b <= n + 1:
                raise FaceDataError(
                    f"{self.rec_path}: identity record {int(k)} range ({a}, {b}) lies outside "
                    f"the image records 1..{n}"
                )
            self.identity_ranges.append((a, b))
            labels[a - 1 : b - 1] = _class_label(self.read_header(a))
        if (labels < 0).any():
            first = int(np.flatnonzero(labels < 0)[0]) + 1
            raise FaceDataError(
                f"{self.rec_path}: image record {first} belongs to no identity record"
            )
        return labels

    # -- reading ---------------------------------------------------------------------------
    def _handle(self) -> tuple[int, int]:
        """The record file's descriptor and size, opened once per process (loader workers).

        Records are read with ``pread``, not through a memory map: a map's touched pages count
        in the process's resident memory, which would grow towards the file's size (hundreds
        of GB) over an epoch; ``pread`` keeps only the record being decoded.
        """
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            fd = os.open(self.rec_path, os.O_RDONLY)
            self._file = (fd, os.fstat(fd).st_size)
            self._pid = pid
        return self._file

    def close(self) -> None:
        """Close the record file of this process (it is opened again on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            os.close(self._file[0])
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def read_record(self, key: int) -> bytes:
        """The data of record ``key`` (continuation parts joined, magic restored)."""
        offset = self._offset(key)
        if offset is None:
            raise FaceDataError(f"RecordIO index {self.idx_path} has no record {key}")
        fd, size = self._handle()
        out = bytearray()
        pos = offset
        while True:
            if pos + 8 > size:
                raise FaceDataError(
                    f"{self.rec_path} is truncated: record {key} at offset {offset} ends in "
                    f"the middle of a record header (at byte {pos})"
                )
            magic, lrec = struct.unpack("<II", os.pread(fd, 8, pos))
            if magic != MAGIC:
                raise FaceDataError(
                    f"{self.rec_path}: bad magic 0x{magic:08x} at byte {pos} (record {key} at "
                    f"offset {offset}); not a RecordIO file or the index is wrong"
                )
            cflag, length = lrec >> 29, lrec & _MAX_LEN
            padded = (length + 3) & ~3
            if pos + 8 + length > size:
                raise FaceDataError(
                    f"{self.rec_path} is truncated: record {key} at offset {offset} announces "
                    f"{length} bytes at byte {pos}, only {size - pos - 8} remain"
                )
            if cflag == 0 and not out:  # the common case: one part, one copy
                return os.pread(fd, length, pos + 8)
            out += os.pread(fd, length, pos + 8)
            pos += 8 + padded
            if cflag in (0, 3):
                return bytes(out)
            if cflag > 3:
                raise FaceDataError(
                    f"{self.rec_path}: invalid continuation flag {cflag} at byte {pos} "
                    f"(record {key} at offset {offset})"
                )
            out += _MAGIC_BYTES

    def _unpack(self, key: int) -> tuple[IRHeader, bytes]:
        record = self.read_record(key)
        try:
            return unpack(record)
        except ValueError as exc:
            raise FaceDataError(
                f"{self.rec_path}: record {key} at offset {self._offset(key)}: {exc}"
            ) from exc

    def read_header(self, key: int) -> IRHeader:
        """The ``IRHeader`` of record ``key``."""
        return self._unpack(key)[0]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        key = int(self.keys[index])
        header, data = self._unpack(key)
        try:
            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("RGB")
                if im.size != (self.size, self.size):
                    im = im.resize((self.size, self.size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise FaceDataError(
                f"{self.rec_path}: cannot decode the image of record {key} at offset "
                f"{self._offset(key)}: {exc}"
            ) from exc
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return image, _class_label(header)


def write_recordio(
    root: str | os.PathLike,
    samples: Iterable[tuple[bytes, int]],
    image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
    num_classes: int | None = None,
) -> Path:
    """Write ``train.rec``/``train.idx``/``property`` like InsightFace's ``face2rec2.py``.

    ``samples`` are (encoded JPEG/PNG bytes, class label), all images of one identity
    contiguous. Images become keys ``1..N`` (``pack`` with a scalar label, ``flag = 0``), then
    the header record 0 with labels ``(N + 1, N + 1 + K)``, then one record per identity with
    its image key range; ``train.idx`` lists them in write order like ``MXIndexedRecordIO``.
    ``num_classes`` defaults to ``max(label) + 1``. Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ranges: list[tuple[int, int]] = []
    seen: set[int] = set()
    last: int | None = None
    key = 1
    max_label = -1
    tmp_rec = root / "train.rec.tmp"
    tmp_idx = root / "train.idx.tmp"
    with open(tmp_rec, "wb") as rec, open(tmp_idx, "w", encoding="ascii", newline="\n") as idx:

        def write(k: int, data: bytes) -> None:
            idx.write(f"{k}\t{rec.tell()}\n")
            rec.write(encode_record(data))

        for data, label in samples:
            label = int(label)
            if label != last:
                if label in seen:
                    raise ValueError(
                        f"label {label} appears again after other labels: the images of one "
                        "identity must be contiguous"
                    )
                if last is not None:
                    ranges[-1] = (ranges[-1][0], key)
                ranges.append((key, key))
                seen.add(label)
                last = label
            write(key, pack(IRHeader(0, label, key, 0), bytes(data)))
            max_label = max(max_label, label)
            key += 1
        if not ranges:
            raise ValueError("no samples to write")
        ranges[-1] = (ranges[-1][0], key)
        write(0, pack(IRHeader(2, [float(key), float(key + len(ranges))], 0, 0), b""))
        for a, b in ranges:
            write(key, pack(IRHeader(2, [float(a), float(b)], key, 0), b""))
            key += 1
    os.replace(tmp_rec, root / "train.rec")
    os.replace(tmp_idx, root / "train.idx")
    n_classes = max_label + 1 if num_classes is None else num_classes
    (root / "property").write_text(f"{n_classes},{image_size[0]},{image_size[1]}\n")
    return root


def _folder_samples(folder: Path, size: int) -> Iterable[tuple[bytes, int]]:
    """Encoded images of an ImageFolder: JPEG/PNG of the right size as is, others as JPEG 95."""
    from faces.data import scan_image_folder

    index = scan_image_folder(folder)
    for path, label in zip(index.paths, index.labels, strict=True):
        raw = path.read_bytes()
        try:
            with Image.open(io.BytesIO(raw)) as im:
                if im.format in ("JPEG", "PNG") and im.size == (size, size) and im.mode == "RGB":
                    yield raw, int(label)
                    continue
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=95)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise FaceDataError(f"cannot read image {path}: {exc}") from exc
        yield buf.getvalue(), int(label)


def main(argv: list[str] | None = None) -> int:
    """``python -m faces.recordio pack IMAGEFOLDER OUT``: convert an ImageFolder."""
    parser = argparse.ArgumentParser(
        prog="python -m faces.recordio", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="ImageFolder root/<person>/<image> -> OUT/train.rec, .idx")
    p.add_argument("folder", help="aligned ImageFolder, one folder per person")
    p.add_argument("out", help="output folder for train.rec, train.idx, property")
    p.add_argument("--size", type=int, default=IMAGE_SIZE, help="image side (default 112)")
    args = parser.parse_args(argv)
    try:
        out = write_recordio(
            args.out, _folder_samples(Path(args.folder), args.size), (args.size, args.size)
        )
        ds = RecordIOFaces(out, args.size)
    except FaceDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(ds)} images of {len(ds.identity_ranges)} identities to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
