"""The models that judge reconstructions: an embedding of normalised faces.

A facekd model (the teacher by default) judges through PyTorch, on the face and its mirror
image as everywhere in facekd. ``dlib`` is the independent judge: dlib's ResNet face
descriptor (``dlib_face_recognition_resnet_model_v1``, 99.38% on LFW, CC0, shipped by the
``face_recognition_models`` package; ``pip install 'facekd[judge]'``). It was trained on
other people's faces than any facekd teacher, so a teacher's reconstructions are not judged by
the model they were inverted from. dlib expects a 150x150 chip cut around five landmarks
(eye corners, nose); facekd's faces are already aligned, so one chip geometry serves every
image: the median landmarks of dlib's 5-point predictor over the attacked set's real faces.
Reconstructions then go through exactly the crop their originals went through, even where
they are too blurred for a landmark detector.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faces.evaluate import EmbedFn, embed_images, torch_embed_fn
from faces.transforms import PIXEL_MEAN, PIXEL_SCALE

__all__ = [
    "DLIB",
    "JudgeModel",
    "dlib_fingerprint",
    "dlib_judge",
    "dlib_landmarks",
    "dlib_missing",
    "model_judge",
]

DLIB = "dlib"  # the value of privacy.judge / --judge that selects dlib's descriptor
DLIB_CHIP = 150  # the chip size and padding dlib's descriptor was trained on
DLIB_PADDING = 0.25
LANDMARK_FACES = 200  # real faces whose 5-point landmarks fix the chip geometry
_RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
_LANDMARKS = "shape_predictor_5_face_landmarks.dat"


@dataclass(frozen=True)
class JudgeModel:
    """An embedding of normalised (N, 3, H, W) faces, and whether the judge also embeds
    the mirror image (facekd models do; dlib's descriptor is used as published, once)."""

    embed: EmbedFn
    flip: bool = True

    def embed_faces(self, images: torch.Tensor) -> np.ndarray:
        """Unit embeddings of uint8 (N, 3, H, W) faces, as this judge sees them."""
        return embed_images(self.embed, images, flip=self.flip)


def model_judge(model: torch.nn.Module) -> JudgeModel:
    """A PyTorch face model as judge (image + mirror image, as facekd evaluates)."""
    return JudgeModel(torch_embed_fn(model))


def dlib_missing() -> str | None:
    """Why the dlib judge cannot run here, or None when it can."""
    missing = [
        m for m in ("dlib", "face_recognition_models") if importlib.util.find_spec(m) is None
    ]
    if missing:
        return (
            f"the dlib judge needs {' and '.join(missing)}: pip install 'facekd[judge]' "
            "(dlib-bin, face_recognition_models)"
        )
    return None


def _model_file(name: str) -> Path:
    """A model file of face_recognition_models, found without importing the package (its
    ``__init__`` imports the deprecated ``pkg_resources``)."""
    missing = dlib_missing()
    if missing:
        raise ImportError(missing)
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"the dlib judge: {path} is missing (reinstall face_recognition_models)"
        )
    return path


@cache  # the 22 MB model file is hashed once per process
def dlib_fingerprint() -> str:
    """dlib's version and the descriptor file's hash: what a cached privacy stage depends on."""
    import dlib

    digest = hashlib.sha256(_model_file(_RECOGNITION).read_bytes()).hexdigest()
    return f"dlib {dlib.__version__} {digest}"


def _hwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) -> contiguous uint8 (N, H, W, 3), dlib's RGB layout."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 2, 3, 1))


def dlib_landmarks(references: torch.Tensor, limit: int = LANDMARK_FACES) -> np.ndarray:
    """The median (5, 2) landmarks (x, y in pixels) of dlib's 5-point predictor over up to
    ``limit`` evenly spaced uint8 (N, 3, H, W) faces, the whole image taken as the face box."""
    import dlib

    if len(references) == 0:
        raise ValueError("the dlib judge needs real faces to place its landmarks")
    predictor = dlib.shape_predictor(str(_model_file(_LANDMARKS)))
    pick = np.unique(np.linspace(0, len(references) - 1, min(limit, len(references))).astype(int))
    faces = _hwc(references[torch.from_numpy(pick)])
    box = dlib.rectangle(0, 0, faces.shape[2] - 1, faces.shape[1] - 1)
    points = [
        [(p.x, p.y) for p in predictor(np.ascontiguousarray(face), box).parts()] for face in faces
    ]
    return np.median(np.asarray(points, dtype=np.float64), axis=0)


def dlib_judge(references: torch.Tensor) -> JudgeModel:
    """dlib's descriptor on chips cut at the median landmarks of ``references`` (uint8
    (N, 3, H, W) real faces, e.g. the attacked set)."""
    import dlib

    landmarks = dlib_landmarks(references)
    net = dlib.face_recognition_model_v1(str(_model_file(_RECOGNITION)))
    height, width = references.shape[2:]
    shape = dlib.full_object_detection(
        dlib.rectangle(0, 0, width - 1, height - 1),
        [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks],
    )

    def embed(batch: np.ndarray) -> np.ndarray:
        if batch.shape[2:] != (height, width):
            raise ValueError(
                f"the dlib judge placed its landmarks on {height}x{width} faces, "
                f"got {batch.shape[2]}x{batch.shape[3]}"
            )
        pixels = np.clip(np.rint(batch * PIXEL_SCALE + PIXEL_MEAN), 0, 255)
        chips: list[Any] = [
            dlib.get_face_chip(np.ascontiguousarray(face), shape, DLIB_CHIP, DLIB_PADDING)
            for face in _hwc(pixels)
        ]
        if not chips:
            return np.zeros((0, 128), np.float32)
        return np.asarray(net.compute_face_descriptor(chips), dtype=np.float32)

    return JudgeModel(embed, flip=False)
