"""Face alignment: raw photos -> 112x112 crops aligned to the ArcFace 5-point template.

The faces are found by MTCNN (the P/R/O-Net weights bundled in the MIT-licensed
``facenet-pytorch`` wheel; nothing is downloaded at run time). Each face's five landmarks
(left eye, right eye, nose tip, left and right mouth corners, "left" meaning the image's left)
are mapped onto :data:`ARCFACE_TEMPLATE` by the least-squares similarity transform (Umeyama),
and the photo is warped with bilinear sampling and a black border, as insightface's
``face_align.norm_crop`` does. Coordinates are in pixels with pixel centres at integers.

Command line: ``facekd align SRC DST`` (see ``pipelines.commands.align``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from faces.data import IMAGE_SUFFIXES, FaceDataError

__all__ = [
    "ALIGNED_SIZE",
    "ARCFACE_TEMPLATE",
    "REPORT_NAME",
    "AlignReport",
    "AlignedImage",
    "Detections",
    "Detector",
    "DetectorUnavailableError",
    "FaceDetector",
    "SeveralFaces",
    "UnreadableImage",
    "align_face",
    "align_folder",
    "select_face",
    "similarity_transform",
    "warp_affine",
]

ALIGNED_SIZE = 112
REPORT_NAME = "align_report.json"
JPEG_QUALITY = 95

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)
"""The standard ArcFace (InsightFace) landmark positions in a 112x112 crop, (5, 2) as (x, y)."""
ARCFACE_TEMPLATE.setflags(write=False)

Multiple = Literal["keep_largest", "skip"]


class DetectorUnavailableError(RuntimeError):
    """The face detector's package (facenet-pytorch) is not installed."""


# --------------------------------------------------------------------------- geometry


def similarity_transform(src_pts: np.ndarray, dst_pts: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) src -> dst.

    Umeyama's closed form (no reflection). Returns the 2x3 matrix ``M`` with
    ``dst ~= M[:, :2] @ src + M[:, 2]``. Raises ValueError for mismatched shapes, fewer than
    two points or coincident source points.
    """
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(
            f"need two (N, 2) point arrays of the same shape with N >= 2, "
            f"got {src.shape} and {dst.shape}"
        )
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("points must be finite")
    n = len(src)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = float((src_c**2).sum()) / n
    if src_var <= 1e-12:
        raise ValueError("source points coincide: no similarity transform is defined")
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best orthogonal map would reflect
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float((s * d).sum()) / src_var
    shift = dst_mean - scale * rot @ src_mean
    return np.hstack([scale * rot, shift[:, None]])


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp ``image`` (H, W, C) uint8 by the 2x3 ``matrix`` (source -> output coordinates).

    ``size`` is the output (width, height). Bilinear sampling; pixels outside the source
    count as black (OpenCV's ``warpAffine`` with a constant 0 border).
    """
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"expected a 2x3 matrix, got shape {m.shape}")
    inv = np.linalg.inv(m[:, :2])
    out_w, out_h = size
    ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    grid = np.stack([xs.ravel() - m[0, 2], ys.ravel() - m[1, 2]])
    sx, sy = inv @ grid  # source coordinates of every output pixel
    x0, y0 = np.floor(sx), np.floor(sy)
    wx, wy = sx - x0, sy - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    h, w = image.shape[:2]
    src = image.astype(np.float64)
    out = np.zeros((sx.size, image.shape[2]), dtype=np.float64)
    for dy, dx, wt in (
        (0, 0, (1 - wx) * (1 - wy)),
        (0, 1, wx * (1 - wy)),
        (1, 0, (1 - wx) * wy),
        (1, 1, wx * wy),
    ):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        vals = src[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
        out += (wt * inside)[:, None] * vals
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.reshape(out_h, out_w, image.shape[2])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Crop one face aligned to the ArcFace template: uint8 RGB (H, W, 3) -> (size, size, 3).

    ``landmarks`` are the face's five points (5, 2) in ``image`` pixel coordinates, ordered as
    :data:`ARCFACE_TEMPLATE`. ``size`` other than 112 scales the template.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB (H, W, 3) image, got shape {img.shape}")
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got shape {pts.shape}")
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    matrix = similarity_transform(pts, template)
    return warp_affine(img.astype(np.uint8, copy=False), matrix, (size, size))


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Detections:
    """Faces found in one image: boxes (N, 4) x1 y1 x2 y2, probs (N,), landmarks (N, 5, 2)."""

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def empty() -> Detections:
        """No faces."""
        f32 = np.float32
        return Detections(np.zeros((0, 4), f32), np.zeros((0,), f32), np.zeros((0, 5, 2), f32))


class Detector(Protocol):
    """Anything that finds faces and their 5 landmarks in an RGB uint8 (H, W, 3) image."""

    def detect(self, image: np.ndarray) -> Detections: ...


class FaceDetector:
    """MTCNN face detector with the weights bundled in the ``facenet-pytorch`` wheel.

    ``min_face_size`` is the smallest face (pixels) searched for; ``thresholds`` the P/R/O-Net
    score thresholds. ``threads``: torch intra-op threads while detecting (restored after each
    call; None keeps torch's setting). MTCNN's many small convolutions gain little from threads
    and slow down badly on a busy CPU, hence 1. Install the weights' package with
    ``pip install --no-deps facenet-pytorch==2.6.0``.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        device: str = "cpu",
        threads: int | None = 1,
    ) -> None:
        if min_face_size < 1:
            raise ValueError(f"min_face_size must be >= 1, got {min_face_size}")
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise DetectorUnavailableError(
                "the face detector needs facenet-pytorch: "
                "pip install --no-deps facenet-pytorch==2.6.0"
            ) from exc
        import torch

        self.threads = threads
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self._mtcnn = MTCNN(
            min_face_size=self.min_face_size,
            thresholds=list(self.thresholds),
            keep_all=True,
            select_largest=False,
            device=torch.device(device),
        ).eval()

    def describe(self) -> dict[str, Any]:
        """Settings, for reports."""
        from importlib.metadata import version

        return {
            "name": f"mtcnn (weights of facenet-pytorch {version('facenet-pytorch')})",
            "min_face_size": self.min_face_size,
            "thresholds": list(self.thresholds),
        }

    def _run(self, img: np.ndarray) -> tuple[Any, Any, Any]:
        import torch

        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self._mtcnn.detect(img, landmarks=True)
        finally:
            torch.set_num_threads(before)

    def detect(self, image: np.ndarray) -> Detections:
        """All faces in an RGB uint8 (H, W, 3) image, most confident first."""
        img = np.ascontiguousarray(image, dtype=np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an RGB (H, W, 3) image, got shape {img.shape}")
        if min(img.shape[:2]) < self.min_face_size:  # MTCNN's image pyramid would be empty
            return Detections.empty()
        boxes, probs, points = self._run(img)
        if boxes is None or len(boxes) == 0:
            return Detections.empty()
        dets = Detections(
            np.asarray(np.stack(list(boxes)), dtype=np.float32).reshape(-1, 4),
            np.asarray(list(probs), dtype=np.float32).reshape(-1),
            np.asarray(np.stack(list(points)), dtype=np.float32).reshape(-1, 5, 2),
        )
        order = np.argsort(-dets.probs, kind="stable")
        return Detections(dets.boxes[order], dets.probs[order], dets.landmarks[order])


def select_face(dets: Detections, image_shape: tuple[int, ...] | None = None) -> int:
    """Index of the face to keep: the largest, preferring faces near the image centre.

    Without ``image_shape`` (H, W, ...) the largest box wins. With it, the score is the box
    area inside the image minus twice the squared distance of the box centre from the image
    centre (insightface's choice of the main face), so a bystander cut off at the border loses
    to the centred subject. Ties go to the most confident face.
    """
    if len(dets) == 0:
        raise ValueError("no faces to select from")
    b = dets.boxes.astype(np.float64)
    if image_shape is None:
        score = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    else:
        h, w = image_shape[:2]
        x1, x2 = np.clip(b[:, 0], 0, w), np.clip(b[:, 2], 0, w)
        y1, y2 = np.clip(b[:, 1], 0, h), np.clip(b[:, 3], 0, h)
        area = (x2 - x1) * (y2 - y1)
        cx, cy = (b[:, 0] + b[:, 2]) / 2 - w / 2, (b[:, 1] + b[:, 3]) / 2 - h / 2
        score = area - 2.0 * (cx**2 + cy**2)
    return int(np.lexsort((-dets.probs, -score))[0])


# --------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class AlignedImage:
    """One written crop: source and output paths (relative), and the face that was used."""

    source: str
    output: str
    prob: float
    landmarks: list[list[float]]


@dataclass(frozen=True)
class SeveralFaces:
    """An image with more than one face; ``kept``: whether the largest one was aligned."""

    source: str
    faces: int
    kept: bool


@dataclass(frozen=True)
class UnreadableImage:
    """An image file that could not be decoded."""

    source: str
    error: str


@dataclass
class AlignReport:
    """What :func:`align_folder` did; paths are relative to ``src`` / ``dst``."""

    src: str
    dst: str
    images: int = 0
    aligned: list[AlignedImage] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    several_faces: list[SeveralFaces] = field(default_factory=list)
    unreadable: list[UnreadableImage] = field(default_factory=list)
    detector: dict[str, Any] = field(default_factory=dict)
    multiple: str = "keep_largest"

    @property
    def report_path(self) -> Path:
        """Where the JSON report is written."""
        return Path(self.dst) / REPORT_NAME

    def counts(self) -> dict[str, int]:
        """Number of images found, aligned, with no face, with several faces, unreadable."""
        return {
            "images": self.images,
            "aligned": len(self.aligned),
            "no_face": len(self.no_face),
            "several_faces": len(self.several_faces),
            "unreadable": len(self.unreadable),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the content of ``align_report.json``)."""
        return {
            "src": self.src,
            "dst": self.dst,
            "size": ALIGNED_SIZE,
            "template": ARCFACE_TEMPLATE.tolist(),
            "detector": self.detector,
            "multiple": self.multiple,
            "counts": self.counts(),
            "no_face": self.no_face,
            "several_faces": [asdict(s) for s in self.several_faces],
            "unreadable": [asdict(u) for u in self.unreadable],
            "aligned": [asdict(a) for a in self.aligned],
        }


def _is_image(path: Path) -> bool:
    visible = not path.name.startswith(".")
    return visible and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _source_images(src: Path) -> Iterator[Path]:
    """``src/<image>`` then ``src/<person>/<image>``, sorted; hidden entries are skipped."""
    entries = sorted(src.iterdir())
    yield from (p for p in entries if _is_image(p))
    for person in entries:
        if person.is_dir() and not person.name.startswith("."):
            yield from (p for p in sorted(person.iterdir()) if _is_image(p))


def _output_names(sources: list[Path], src: Path) -> dict[Path, Path]:
    """Relative output path of every source: ``<stem>.jpg``, or ``<name>.jpg`` on a clash."""
    stems: dict[Path, int] = {}
    for p in sources:
        key = p.relative_to(src).with_suffix(".jpg")
        stems[key] = stems.get(key, 0) + 1
    out = {}
    for p in sources:
        rel = p.relative_to(src)
        key = rel.with_suffix(".jpg")
        out[p] = key if stems[key] == 1 else rel.with_name(rel.name + ".jpg")
    return out


def _check_folders(src: Path, dst: Path) -> tuple[Path, Path]:
    if not src.exists():
        raise FaceDataError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise FaceDataError(f"source {src} is not a folder (expected SRC/<person>/<image>)")
    if dst.exists() and not dst.is_dir():
        raise FaceDataError(f"output {dst} exists and is not a folder")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise FaceDataError(
            f"output folder {dst} is inside the source folder {src}: choose an output folder "
            "outside it (the crops would be mixed with the photos)"
        )
    if dst_r in src_r.parents:
        raise FaceDataError(
            f"source folder {src} is inside the output folder {dst}: choose an output folder "
            "outside it"
        )
    return src_r, dst_r


_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


def _read_rgb(path: Path) -> np.ndarray:
    """Decode a photo to RGB uint8 (H, W, 3), honouring its EXIF orientation."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _save_jpeg_atomic(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image, "RGB").save(f, format="JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json_atomic(data: dict[str, Any], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def align_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    progress: bool = True,
    *,
    detector: Detector | None = None,
    min_face_size: int = 20,
    multiple: Multiple = "keep_largest",
) -> AlignReport:
    """Detect and align the faces of ``src/<person>/<image>`` (and ``src/<image>``) into ``dst``.

    Writes ``dst/<person>/<stem>.jpg`` (112x112, JPEG quality 95, each file atomically) and
    ``dst/align_report.json``. When several faces are found the main one (largest, near the
    centre: :func:`select_face`) is aligned (``multiple="keep_largest"``) or the image is
    skipped (``"skip"``); either way it is reported. Images with no face and files that cannot
    be decoded are reported, not fatal. ``detector`` defaults to :class:`FaceDetector` with
    ``min_face_size``. Raises FaceDataError for a missing source, a source without images or
    ``dst`` inside ``src`` (or ``src`` inside ``dst``).
    """
    from tqdm import tqdm

    if multiple not in ("keep_largest", "skip"):
        raise ValueError(f"multiple must be 'keep_largest' or 'skip', got {multiple!r}")
    src_p, dst_p = Path(src), Path(dst)
    src_r, dst_r = _check_folders(src_p, dst_p)
    sources = list(_source_images(src_r))
    if not sources:
        raise FaceDataError(
            f"source folder {src_p} holds no images "
            f"(expected SRC/<person>/<image> with suffix {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if detector is None:
        detector = FaceDetector(min_face_size=min_face_size)
    describe = getattr(detector, "describe", None)
    info = describe() if callable(describe) else {"name": type(detector).__name__}
    report = AlignReport(
        src=str(src_p), dst=str(dst_p), images=len(sources), detector=info, multiple=multiple
    )
    outputs = _output_names(sources, src_r)
    dst_r.mkdir(parents=True, exist_ok=True)
    bar = tqdm(  # on standard output, as training's bar: standard error may go to a log
        sources, desc="align", unit="img", disable=not progress, dynamic_ncols=True, file=sys.stdout
    )
    for path in bar:
        rel = path.relative_to(src_r).as_posix()
        try:
            image = _read_rgb(path)
        except _DECODE_ERRORS as exc:
            report.unreadable.append(UnreadableImage(rel, f"{type(exc).__name__}: {exc}"))
            continue
        dets = detector.detect(image)
        if len(dets) == 0:
            report.no_face.append(rel)
            continue
        if len(dets) > 1:
            report.several_faces.append(SeveralFaces(rel, len(dets), multiple == "keep_largest"))
            if multiple == "skip":
                continue
        k = select_face(dets, image.shape)
        crop = align_face(image, dets.landmarks[k])
        out_rel = outputs[path]
        _save_jpeg_atomic(crop, dst_r / out_rel)
        report.aligned.append(
            AlignedImage(
                rel,
                out_rel.as_posix(),
                round(float(dets.probs[k]), 6),
                np.round(dets.landmarks[k].astype(np.float64), 2).tolist(),
            )
        )
        bar.set_postfix(
            no_face=len(report.no_face), several=len(report.several_faces), refresh=False
        )
    bar.close()
    _write_json_atomic(report.to_dict(), dst_r / REPORT_NAME)
    return report
