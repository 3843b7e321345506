"""Judges of the privacy analysis: the flip convention, the independent dlib judge (chip
geometry, embeddings, errors) and how a pipeline names it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from faces.evaluate import embed_images
from privacy.analysis import TargetSet, attacked_rows, make_judge
from privacy.judges import DLIB, JudgeModel, dlib_missing

needs_dlib = pytest.mark.skipif(dlib_missing() is not None, reason="facekd[judge] not installed")


def synthetic_people(identities: int, per_person: int, seed: int) -> TargetSet:
    """uint8 (N, 3, 112, 112) rendered faces: each person drawn ``per_person`` times."""
    from faces.synthetic import render_face, sample_identity

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for person in range(identities):
        params = sample_identity(rng)
        for _ in range(per_person):
            images.append(np.asarray(render_face(params, rng)).transpose(2, 0, 1))
            labels.append(person)
    return TargetSet(torch.from_numpy(np.stack(images)), np.array(labels))


@pytest.fixture(scope="module")
def faces() -> TargetSet:
    return synthetic_people(identities=6, per_person=3, seed=0)


def test_embed_images_without_flip_embeds_the_image_once() -> None:
    calls = []

    def embed(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.copy())
        return batch.reshape(len(batch), -1)[:, :4]

    images = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
    both = embed_images(embed, images)
    once = embed_images(embed, images, flip=False)
    assert both.shape == (3, 8) and once.shape == (3, 4) and len(calls) == 3
    assert np.allclose(np.linalg.norm(once, axis=1), 1)
    assert np.array_equal(calls[1], calls[0][..., ::-1])  # the second call saw the mirror


def test_a_bare_embed_fn_judges_like_a_facekd_model(faces: TargetSet) -> None:
    """make_judge takes an EmbedFn (image + mirror) or a JudgeModel; both agree when the
    embedding is the same."""

    def pixels(batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1)

    rows, refs = attacked_rows(faces.labels, 6, 0)
    bare = make_judge(pixels, faces, rows, refs, 1e-2)
    model = make_judge(JudgeModel(pixels), faces, rows, refs, 1e-2)
    assert bare.threshold == model.threshold and bare.model.flip
    assert bare.embed(faces.images[:2]).shape == (2, 2 * 3 * 112 * 112)


@needs_dlib
def test_dlib_landmarks_sit_on_the_eyes_and_nose(faces: TargetSet) -> None:
    from privacy.judges import dlib_landmarks

    points = dlib_landmarks(faces.images)
    assert points.shape == (5, 2) and ((points > 0) & (points < 112)).all()
    eyes, nose = points[:4], points[4]
    # dlib's 5 points: two corners of each eye, then the bottom of the nose below them
    assert (nose[1] > eyes[:, 1]).all()
    assert eyes[:, 0].min() < nose[0] < eyes[:, 0].max()
    with pytest.raises(ValueError, match="real faces"):
        dlib_landmarks(faces.images[:0])


@needs_dlib
def test_dlib_judge_tells_a_copy_from_another_person(faces: TargetSet) -> None:
    from privacy.judges import dlib_judge

    judge = dlib_judge(faces.images)
    assert not judge.flip
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(-6, 7, faces.images.shape, generator=g)
    copies = (faces.images.int() + noise).clamp(0, 255).to(torch.uint8)
    a = embed_images(judge.embed, faces.images, flip=False)
    b = embed_images(judge.embed, copies, flip=False)
    assert a.shape == (len(faces.images), 128)
    same = (a * b).sum(1)  # each face against its noisy copy
    other = (a * np.roll(b, 3, axis=0)).sum(1)  # against a face of the next person
    assert (same > other).all() and same.min() > 0.98
    assert np.allclose(embed_images(judge.embed, faces.images[:4], flip=False), a[:4], atol=1e-6)
    with pytest.raises(ValueError, match="112x112"):
        judge.embed(np.zeros((1, 3, 64, 64), np.float32))


@needs_dlib
def test_dlib_judge_in_the_analysis(faces: TargetSet, tmp_path) -> None:
    """The analysis runs with dlib as judge: its real pairs and the mean-face baseline."""
    from dataclasses import replace

    from privacy.analysis import PrivacyBudget, analyse
    from privacy.judges import dlib_judge

    budget = replace(PrivacyBudget(), attacks=("inversion",), attacked_people=6, grid_faces=2)
    report = analyse({}, dlib_judge(faces.images), faces.images, faces, budget, tmp_path, print)
    m = report.metrics
    assert 0 <= m["judge.accept_genuine"] <= 1 and m["judge.threshold"] < 1
    assert "baseline.mean_face.accept" in m


def test_config_names_the_dlib_judge(monkeypatch, tmp_path) -> None:
    from pipelines.core.config import ConfigError, PrivacyConfig, check_privacy
    from pipelines.orchestration.stages import PrivacyStage

    if dlib_missing() is None:
        check_privacy(PrivacyConfig(judge=DLIB), "p.yaml")  # no file needed
        from pipelines.core.config import PipelineConfig

        config = PipelineConfig.model_validate(
            {
                "pipeline": {"name": "p"},
                "stages": ["teacher", "distill", "privacy"],
                "privacy": {"judge": DLIB},
            }
        )
        assert PrivacyStage().settings(config)["judge"] == DLIB
        assert PrivacyStage().external_inputs(config)["judge"].startswith("dlib ")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "dlib" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r"p\.yaml: privacy\.judge: .*facekd\[judge\]"):
        check_privacy(PrivacyConfig(judge=DLIB), "p.yaml")
    with pytest.raises(ConfigError, match=r"privacy\.judge: file .*nope\.pt .*'dlib'"):
        check_privacy(PrivacyConfig(judge=str(tmp_path / "nope.pt")), "p.yaml")
