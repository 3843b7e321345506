"""Tests for faces.align (similarity transform, warping, MTCNN wrapper, folder alignment)
and the ``facekd align`` command."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faces.align import (
    ALIGNED_SIZE,
    ARCFACE_TEMPLATE,
    REPORT_NAME,
    Detections,
    align_face,
    align_folder,
    select_face,
    similarity_transform,
    warp_affine,
)
from faces.data import FaceDataError
from faces.synthetic import write_synthetic_faces
from pipelines.commands.align import add_parser, run_align

LFW10 = Path(__file__).resolve().parents[1].parent / "shared" / "faces" / "lfw10"


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ matrix[:, :2].T + matrix[:, 2]


def _smooth_image(seed: int = 0, size: int = ALIGNED_SIZE) -> np.ndarray:
    """A smooth RGB pattern (bilinear resampling of it stays close to the original)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    chans = [
        127 + 100 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * xs + rng.uniform(0.5, 1.5) * ys))
        for _ in range(3)
    ]
    return np.clip(np.stack(chans, axis=-1), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- geometry


def test_similarity_transform_recovers_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 250, (5, 2))
    truth = _similarity(1.7, 0.4, 12.5, -30.25)
    m = similarity_transform(src, _apply(truth, src))
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, truth, atol=1e-9)
    # the standard case: landmarks onto the template
    m = similarity_transform(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(m, np.eye(2, 3), atol=1e-12)


def test_similarity_transform_is_least_squares_without_reflection() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    mirrored = src * np.array([-1.0, 1.0])
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0  # a similarity never mirrors the face
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(ValueError, match="shape"):
        similarity_transform(np.ones((5, 2)), np.ones((4, 2)))


def test_align_face_with_template_landmarks_is_identity() -> None:
    img = np.random.default_rng(2).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = align_face(img, ARCFACE_TEMPLATE.copy())
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)


def test_align_face_undoes_a_known_pose() -> None:
    """A face enlarged 2x, rotated and shifted in a bigger photo comes back to the crop."""
    face = _smooth_image()
    pose = _similarity(2.0, math.radians(25), 70.0, 20.0)  # crop -> photo coordinates
    photo = warp_affine(face, pose, (300, 300))
    landmarks = _apply(pose, ARCFACE_TEMPLATE)
    out = align_face(photo, landmarks)
    inner = (slice(8, -8), slice(8, -8))  # the crop's border mixes in the photo's black edge
    diff = np.abs(out[inner].astype(int) - face[inner].astype(int))
    assert diff.mean() < 2.0, diff.mean()


def test_warp_affine_fills_outside_with_black() -> None:
    img = np.full((10, 10, 3), 200, dtype=np.uint8)
    out = warp_affine(img, np.array([[1.0, 0, 50], [0, 1.0, 50]]), (20, 20))
    assert (out == 0).all()


def test_select_face_prefers_large_centred_faces() -> None:
    lm = np.zeros((3, 5, 2), np.float32)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 50, 40], [5, 5, 55, 45]], np.float32)
    assert select_face(Detections(boxes, np.array([0.99, 0.8, 0.9], np.float32), lm)) == 2
    assert select_face(Detections(boxes, np.array([0.99, 0.95, 0.9], np.float32), lm)) == 1
    # LFW Arnold_Schwarzenegger_0007: a bystander cut off at the border vs the centred subject
    boxes = np.array([[-54.6, 116.0, 51.0, 234.9], [79.7, 68.0, 176.1, 193.7]], np.float32)
    dets = Detections(boxes, np.array([0.9999994, 0.9999595], np.float32), lm[:2])
    assert select_face(dets) == 0  # the bystander's box is larger
    assert select_face(dets, (250, 250, 3)) == 1


# --------------------------------------------------------------------------- MTCNN


@pytest.fixture(scope="module")
def mtcnn():
    pytest.importorskip("facenet_pytorch", reason="pip install --no-deps facenet-pytorch==2.6.0")
    from faces.align import FaceDetector

    return FaceDetector()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic faces; MTCNN finds the face in id_0002's drawings (not in every identity's)."""
    return write_synthetic_faces(
        tmp_path_factory.mktemp("synth") / "faces", identities=3, images_per_identity=2, seed=0
    )


def test_detector_finds_synthetic_face(mtcnn, synthetic: Path) -> None:
    img = np.asarray(Image.open(synthetic / "id_0002" / "img_001.jpg").convert("RGB"))
    dets = mtcnn.detect(img)
    assert len(dets) == 1
    assert dets.boxes.shape == (1, 4) and dets.probs.shape == (1,)
    assert dets.landmarks.shape == (1, 5, 2)
    assert dets.probs[0] > 0.9
    (x1, y1, x2, y2), lm = dets.boxes[0], dets.landmarks[0]
    assert x1 < lm[:, 0].min() and lm[:, 0].max() < x2 and y1 < lm[:, 1].min() < y2
    left_eye, right_eye, nose, mouth_l, mouth_r = lm
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    crop = align_face(img, lm)
    assert crop.shape == (112, 112, 3)


def test_detector_finds_nothing_in_plain_or_tiny_images(mtcnn) -> None:
    for shape in [(200, 200, 3), (8, 8, 3), (15, 300, 3)]:
        dets = mtcnn.detect(np.full(shape, 128, np.uint8))
        assert len(dets) == 0
        assert dets.boxes.shape == (0, 4) and dets.landmarks.shape == (0, 5, 2)


def test_align_folder_with_mtcnn_on_synthetic_faces(mtcnn, synthetic: Path, tmp_path: Path) -> None:
    report = align_folder(synthetic, tmp_path / "out", progress=False, detector=mtcnn)
    c = report.counts()
    assert c["images"] == 6 and c["unreadable"] == 0
    assert c["aligned"] + c["no_face"] == 6
    done = {a.source for a in report.aligned}
    assert {"id_0002/img_000.jpg", "id_0002/img_001.jpg"} <= done
    with Image.open(tmp_path / "out" / "id_0002" / "img_001.jpg") as im:
        assert im.size == (112, 112) and im.mode == "RGB"


# --------------------------------------------------------------------------- folders


class FakeDetector:
    """Finds faces by image width: 300 px -> one face, 320 -> two, anything else -> none.

    Every face is the 112x112 template crop enlarged 2x and shifted; the second face of a
    two-face photo is small.
    """

    pose = _similarity(2.0, 0.0, 40.0, 30.0)

    def detect(self, image: np.ndarray) -> Detections:
        width = image.shape[1]
        big = _apply(self.pose, ARCFACE_TEMPLATE)
        small = ARCFACE_TEMPLATE * 0.3 + 5
        if width == 300:
            faces = [(big, [40, 30, 264, 254], 0.9)]
        elif width == 320:
            faces = [(small, [5, 5, 39, 39], 0.99), (big, [40, 30, 264, 254], 0.9)]
        else:
            return Detections.empty()
        return Detections(
            np.array([f[1] for f in faces], np.float32),
            np.array([f[2] for f in faces], np.float32),
            np.array([f[0] for f in faces], np.float32),
        )


def _photo(width: int) -> Image.Image:
    face = _smooth_image()
    return Image.fromarray(warp_affine(face, FakeDetector.pose, (width, 300)))


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    """src/<person>/<image> photos for the fake detector plus broken and ignored files."""
    src = tmp_path / "raw"
    (src / "alice").mkdir(parents=True)
    (src / "bob").mkdir()
    (src / ".hidden").mkdir()
    _photo(300).save(src / "alice" / "one.png")
    _photo(280).save(src / "alice" / "none.jpg", quality=95)
    _photo(320).save(src / "bob" / "two.jpg", quality=95)
    (src / "bob" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (src / "bob" / "notes.txt").write_text("ignored")
    _photo(300).save(src / ".hidden" / "skip.jpg")
    _photo(300).save(src / "loose.jpg", quality=95)
    return src


def test_align_folder_reports_every_outcome(raw: Path, tmp_path: Path) -> None:
    dst = tmp_path / "aligned"
    report = align_folder(raw, dst, progress=False, detector=FakeDetector())
    assert report.counts() == {
        "images": 5,
        "aligned": 3,
        "no_face": 1,
        "several_faces": 1,
        "unreadable": 1,
    }
    assert report.no_face == ["alice/none.jpg"]
    assert [(s.source, s.faces, s.kept) for s in report.several_faces] == [("bob/two.jpg", 2, True)]
    assert [u.source for u in report.unreadable] == ["bob/broken.jpg"]
    assert sorted(a.output for a in report.aligned) == [
        "alice/one.jpg",
        "bob/two.jpg",
        "loose.jpg",
    ]
    # the largest face of the two-face photo was aligned, and the crop is the original face
    two = next(a for a in report.aligned if a.source == "bob/two.jpg")
    np.testing.assert_allclose(
        two.landmarks, _apply(FakeDetector.pose, ARCFACE_TEMPLATE), atol=0.01
    )
    with Image.open(dst / "bob" / "two.jpg") as im:
        assert im.size == (112, 112) and im.format == "JPEG"
        crop = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(crop[8:-8, 8:-8] - _smooth_image()[8:-8, 8:-8].astype(int)).mean() < 4
    assert not (dst / "alice" / "none.jpg").exists() and not (dst / ".hidden").exists()
    assert not list(dst.rglob("*.tmp"))
    saved = json.loads((dst / REPORT_NAME).read_text())
    assert saved["counts"] == report.counts()
    assert saved["unreadable"][0]["source"] == "bob/broken.jpg"
    assert saved["template"] == ARCFACE_TEMPLATE.tolist()


def test_align_folder_can_skip_photos_with_several_faces(raw: Path, tmp_path: Path) -> None:
    dst = tmp_path / "aligned"
    report = align_folder(raw, dst, progress=False, detector=FakeDetector(), multiple="skip")
    assert [(s.source, s.kept) for s in report.several_faces] == [("bob/two.jpg", False)]
    assert report.counts()["aligned"] == 2
    assert not (dst / "bob" / "two.jpg").exists()


def test_align_folder_rejects_bad_folders(raw: Path, tmp_path: Path) -> None:
    fake = FakeDetector()
    with pytest.raises(FaceDataError, match="does not exist"):
        align_folder(tmp_path / "missing", tmp_path / "out", progress=False, detector=fake)
    with pytest.raises(FaceDataError, match="inside the source"):
        align_folder(raw, raw / "aligned", progress=False, detector=fake)
    with pytest.raises(FaceDataError, match="inside the source"):
        align_folder(raw, raw, progress=False, detector=fake)
    with pytest.raises(FaceDataError, match="inside the output"):
        align_folder(raw, tmp_path, progress=False, detector=fake)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaceDataError, match="holds no images"):
        align_folder(tmp_path / "empty", tmp_path / "out", progress=False, detector=fake)
    assert not (raw / "aligned").exists()


# --------------------------------------------------------------------------- command


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="facekd")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_align_command_options() -> None:
    args = _parse(["align", "in", "out"])
    assert (args.src, args.dst, args.min_face_size, args.multiple) == (
        "in",
        "out",
        20,
        "keep_largest",
    )
    assert args.func is run_align
    args = _parse(["align", "in", "out", "--min-face-size", "40", "--skip-multiple"])
    assert (args.min_face_size, args.multiple) == (40, "skip")
    for bad in (["--min-face-size", "0"], ["--keep-largest", "--skip-multiple"]):
        with pytest.raises(SystemExit):
            _parse(["align", "in", "out", *bad])


def test_align_command_runs(mtcnn, synthetic: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "out"
    assert run_align(_parse(["align", str(synthetic), str(dst)])) == 0
    out = capsys.readouterr().out
    assert "of 6 images" in out and "no face:" in out and "several faces:" in out
    assert (dst / REPORT_NAME).is_file()


# --------------------------------------------------------------------------- real photos


@pytest.mark.shared
@pytest.mark.skipif(not LFW10.is_dir(), reason="../shared/faces/lfw10 is absent")
def test_align_two_lfw_photos(mtcnn, tmp_path: Path) -> None:
    person = sorted(p for p in LFW10.iterdir() if p.is_dir())[0]
    src = tmp_path / "src" / person.name
    src.mkdir(parents=True)
    for photo in sorted(person.glob("*.jpg"))[:2]:
        (src / photo.name).symlink_to(photo)  # links, not copies, of the research data
    report = align_folder(src.parent, tmp_path / "out", progress=False, detector=mtcnn)
    assert report.counts()["aligned"] == 2, report.to_dict()
    for a in report.aligned:
        assert a.prob > 0.9
        with Image.open(tmp_path / "out" / a.output) as im:
            assert im.size == (112, 112) and im.mode == "RGB"
