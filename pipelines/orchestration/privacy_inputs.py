"""The privacy analysis's inputs from facekd's artifacts and folders (stage and command share
this): the three models, the judge, the attacker's faces, the attacked set and the budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from faces.data import FaceDataError, decode_images, load_image, scan_image_folder
from faces.transforms import fill_black_border
from pipelines.core.artifacts import load_model
from pipelines.core.config import PrivacyConfig
from pipelines.training.data import image_files_under
from privacy.analysis import PrivacyBudget, TargetSet
from privacy.gradients import GradientAttack
from privacy.inversion import InversionBudget
from privacy.judges import DLIB, JudgeModel, dlib_judge, model_judge

__all__ = [
    "budget_of",
    "models_of",
    "load_judge",
    "attacker_faces",
    "no_faces",
    "target_set",
]


def budget_of(cfg: PrivacyConfig, seed: int) -> PrivacyBudget:
    """The analysis budget of a ``privacy`` config section."""
    inv, grad = cfg.inversion, cfg.gradient
    return PrivacyBudget(
        inversion=InversionBudget(
            steps=inv.steps,
            batch_size=inv.batch_size,
            lr=inv.lr,
            seed=seed,
            identity_weight=inv.identity_weight,
        ),
        attacks=tuple(dict.fromkeys(cfg.attacks)),
        decoder_width=inv.decoder_width,
        sign_templates=inv.sign_templates,
        gradient=GradientAttack(
            iterations=grad.iterations, lr=grad.lr, tv_weight=grad.tv_weight, seed=seed
        ),
        gradient_batch_sizes=tuple(grad.batch_sizes),
        gradient_faces=max(max(grad.batch_sizes), grad.faces),
        attacked_people=cfg.attacked_people,
        far=cfg.far,
        grid_faces=cfg.grid_faces,
        seed=seed,
    )


def models_of(teacher: str | Path | None, student: str | Path | None) -> dict[str, nn.Module]:
    """The attacked models: the teacher, and the 1-bit student with its float twin (the same
    weights, float activations and weights) from a student artifact."""
    models: dict[str, nn.Module] = {}
    if teacher is not None:
        models["teacher"] = load_model(teacher)[0]
    if student is not None:
        models["twin"] = load_model(student, binary=False)[0]
        models["student"] = load_model(student)[0]
    return models


def load_judge(
    cfg: PrivacyConfig,
    teacher: nn.Module | None,
    targets: TargetSet,
    teacher_path: str | Path | None = None,
) -> tuple[JudgeModel, str]:
    """The judge and a description: ``privacy.judge`` (``dlib``, a facekd model artifact, or a
    checkpoint of ``judge_model``), else the teacher. dlib places its chip on ``targets``."""
    if cfg.judge == DLIB:
        return dlib_judge(targets.images), "dlib's ResNet descriptor (face_recognition_models)"
    if cfg.judge is None:
        if teacher is None:
            raise FaceDataError("privacy: no judge: name privacy.judge or give a teacher")
        about = f"the teacher ({teacher_path})" if teacher_path else "the teacher"
        return model_judge(teacher), about
    path = Path(cfg.judge)
    try:
        return model_judge(load_model(path)[0]), f"{path} (facekd model)"
    except ValueError:
        pass  # not a facekd artifact: a checkpoint of judge_model
    from teachers.checkpoint import load_checkpoint_into
    from teachers.registry import create_teacher

    model = create_teacher(cfg.judge_model, **cfg.judge_args)
    load_checkpoint_into(model, path)
    return model_judge(model.eval()), f"{cfg.judge_model} from {path}"


def no_faces(size: int = 112) -> torch.Tensor:
    """An empty uint8 batch: the attacker's faces when no template inversion runs."""
    return torch.zeros((0, 3, size, size), dtype=torch.uint8)


def attacker_faces(folders: list[str], limit: int, bad_images: str = "fail") -> torch.Tensor:
    """Up to ``limit`` faces under ``folders`` (any depth), evenly spaced over the sorted
    listing, decoded to uint8; black alignment frames of tight crops filled."""
    paths = image_files_under(folders)
    if not paths:
        raise FaceDataError(f"privacy.attacker: no images under {', '.join(folders)}")
    rows = np.unique(np.linspace(0, len(paths) - 1, min(limit, len(paths))).astype(int))
    chosen = [paths[i] for i in rows]
    images, _, _ = decode_images(
        lambda i: load_image(chosen[i]), len(chosen), bad_images=bad_images
    )
    return fill_black_border(images)


def target_set(folder: str | Path, manifest: str = "cache") -> TargetSet:
    """The attacked people: every face of an ImageFolder with its identity label."""
    index = scan_image_folder(folder, manifest=manifest)
    images = decode_images(lambda i: load_image(index.paths[i]), len(index))[0]
    return TargetSet(images, index.labels)
