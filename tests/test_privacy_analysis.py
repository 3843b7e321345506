"""Privacy analysis (issue 21): the analysis over several models on hand-made models, the
``privacy`` pipeline stage (fingerprint, cache, MLflow) and ``facekd privacy``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from tiny_pipeline import tiny_pipeline
from torch import nn

from faces.evaluate import torch_embed_fn
from faces.transforms import normalise
from privacy.analysis import (
    PrivacyBudget,
    TargetSet,
    _best_order,
    analyse,
    attacked_rows,
    format_table,
)
from privacy.gradients import GradientAttack
from privacy.inversion import InversionBudget
from privacy.judges import dlib_missing

SIZE = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def people(n_people: int, per_person: int, seed: int) -> TargetSet:
    """Smooth uint8 faces: each person a base pattern, each image a small variation of it."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n_people, 1, 3, 4, 4, generator=g)
    noise = torch.rand(n_people, per_person, 3, 4, 4, generator=g) * 0.15
    x = (base * 0.85 + noise).reshape(-1, 3, 4, 4)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return TargetSet(images, np.repeat(np.arange(n_people), per_person))


class Pixels(nn.Module):
    """An invertible model on these faces (bilinear images of a 4x4 pattern): its template is
    the 4x4 average of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1) * self.scale


class Blind(nn.Module):
    """A model that tells nothing about its input: the same template for every face."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * SIZE * SIZE, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1) * 0) + 1


def tiny_budget(**changes: object) -> PrivacyBudget:
    budget = PrivacyBudget(
        inversion=InversionBudget(steps=300, batch_size=16, lr=3e-3),
        decoder_width=32,
        gradient=GradientAttack(iterations=300, lr=0.1),
        gradient_batch_sizes=(1, 2),
        gradient_faces=2,
        attacked_people=6,
        verification_pairs=40,
        grid_faces=4,
    )
    return replace(budget, **changes)


def test_attacked_rows_take_one_face_per_person_and_another_as_reference() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2, 3])  # person 1 and 3 have one face only
    rows, refs = attacked_rows(labels, people=10, seed=0)
    assert rows.tolist() == [0, 3]
    assert (labels[refs] == labels[rows]).all() and (refs != rows).all()
    few, _ = attacked_rows(np.repeat(np.arange(50), 2), people=5, seed=1)
    assert len(few) == 5 and len(set(np.repeat(np.arange(50), 2)[few])) == 5
    with pytest.raises(ValueError, match="two faces"):
        attacked_rows(np.arange(5), people=3, seed=0)


def test_best_order_undoes_a_permutation_of_the_batch() -> None:
    faces = people(4, 1, seed=3).images
    recon = normalise(faces)[torch.tensor([2, 0, 3, 1])] + 0.01
    assert torch.allclose(_best_order(recon, faces), normalise(faces) + 0.01)


def test_analysis_reports_every_attack_and_an_invertible_model_leaks_more(tmp_path) -> None:
    attacker = people(400, 1, seed=1).images  # other people than the targets
    targets = people(8, 3, seed=2)
    models = {"teacher": Pixels(), "twin": Blind(), "student": Blind()}
    lines: list[str] = []
    report = analyse(
        models,
        torch_embed_fn(Pixels()),
        attacker,
        targets,
        tiny_budget(),
        tmp_path,
        log=lines.append,
    )
    m = report.metrics
    for model in models:
        for attack in ("inversion", "inversion_sign"):
            for metric in ("psnr", "ssim", "accept", "seconds"):
                assert f"{model}.{attack}.{metric}" in m
        assert 0.0 <= m[f"{model}.templates.acc"] <= 1.0
    for model in ("twin", "student"):
        for batch in (1, 2):
            assert 0.0 <= m[f"{model}.gradient_b{batch}.accept"] <= 1.0
    assert "teacher.gradient_b1.psnr" not in m  # the teacher is not trained here
    # the invertible model's templates give its faces back; the blind model's give nothing
    assert m["teacher.inversion.psnr"] > m["student.inversion.psnr"] + 3
    assert m["teacher.inversion.accept"] > m["student.inversion.accept"]
    assert m["teacher.templates.acc"] > 0.9 and m["student.templates.acc"] <= 0.6
    # the blind model's decoder learns the average face: no better than guessing it
    assert m["teacher.inversion.psnr"] > m["baseline.mean_face.psnr"] + 3
    assert abs(m["student.inversion.psnr"] - m["baseline.mean_face.psnr"]) < 1.5
    assert 0.0 < m["judge.accept_genuine"] <= 1.0 and m["attacked.faces"] == 6
    assert 30 < m["sanity.gradient_b1.psnr"] <= 100  # one linear layer gives a face back
    saved = json.loads((tmp_path / "privacy.json").read_text())
    assert saved["metrics"] == pytest.approx(m) and saved["budget"]["inversion"]["steps"] == 300
    grid = Image.open(report.grids["inversion"])
    assert grid.size[1] == SIZE * (1 + 2 * len(models))  # originals + 2 template kinds each
    assert Image.open(report.grids["gradient"]).size[1] == SIZE * (1 + 2 * 2)
    assert any("teacher inversion" in line for line in lines)
    table = format_table(m)
    assert (
        table.count("\n") == 5
        and "no template (mean face)" in table
        and "1-bit student" in table
        and "float twin" in table
    )


def test_one_attack_alone(tmp_path) -> None:
    attacker, targets = people(12, 2, seed=1).images, people(6, 2, seed=2)
    models = {"teacher": Pixels(), "twin": Blind(), "student": Blind()}
    budget = tiny_budget(attacks=("gradient",), gradient=GradientAttack(iterations=3))
    report = analyse(
        models, torch_embed_fn(Pixels()), attacker, targets, budget, tmp_path, log=lambda _: None
    )
    assert not any(".inversion" in k for k in report.metrics)
    assert "student.gradient_b2.psnr" in report.metrics and set(report.grids) == {"gradient"}
    budget = tiny_budget(attacks=("inversion",), inversion=InversionBudget(steps=2))
    report = analyse(
        models, torch_embed_fn(Pixels()), attacker, targets, budget, tmp_path, log=lambda _: None
    )
    assert not any(".gradient" in k for k in report.metrics) and set(report.grids) == {"inversion"}
    assert "sanity.gradient_b1.psnr" not in report.metrics


def test_the_same_budget_gives_the_same_figures(tmp_path) -> None:
    attacker, targets = people(12, 2, seed=1).images, people(6, 2, seed=2)
    budget = tiny_budget(
        inversion=InversionBudget(steps=20, batch_size=8),
        gradient=GradientAttack(iterations=10),
        sign_templates=False,
    )
    runs = [
        analyse(
            {"teacher": Pixels()},
            torch_embed_fn(Pixels()),
            attacker,
            targets,
            budget,
            tmp_path / str(i),
            log=lambda _: None,
        ).metrics
        for i in range(2)
    ]
    keys = [k for k in runs[0] if not k.endswith("seconds")]
    assert {k: runs[0][k] for k in keys} == {k: runs[1][k] for k in keys}


# -- the stage and the command ----------------------------------------------------------------
TINY = tiny_pipeline(
    **{
        "pipeline.name": "tiny_privacy",
        "stages": ["teacher", "distill", "privacy"],
        "distill.args.width": 16,
        "export": None,
        "evaluate": None,
        "privacy": {
            "attacker_images": 24,
            "attacked_people": 3,
            "grid_faces": 3,
            "inversion": {"steps": 3, "batch_size": 8, "decoder_width": 4},
            "gradient": {"iterations": 2, "batch_sizes": [1, 2], "faces": 2},
        },
    }
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from faces.synthetic import write_synthetic_faces

    work = tmp_path_factory.mktemp("privacy")
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    write_synthetic_faces(work / "others", identities=4, images_per_identity=4, seed=7)
    return work


def _stage_runs(work: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-test")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    return [r for r in runs if r.data.tags.get("facekd.stage") == "privacy"]


@pytest.mark.slow
def test_privacy_stage_logs_reuses_and_reruns_on_new_settings(workdir, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", "tiny.yaml"]) == 0
    out = capsys.readouterr().out
    assert "Privacy: PSNR dB / SSIM / judge acceptance" in out and "1-bit student" in out
    (run,) = _stage_runs(workdir)
    m = run.data.metrics
    for key in (
        "privacy.teacher.inversion.accept",
        "privacy.student.inversion_sign.ssim",
        "privacy.twin.gradient_b2.psnr",
        "privacy.student.gradient_b1.accept",
        "privacy.student.templates.sign_acc",
        "privacy.judge.threshold",
        "privacy.sanity.gradient_b1.psnr",
    ):
        assert key in m, key
    assert run.data.params["privacy.inversion.steps"] == "3"
    import mlflow

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"privacy.json", "privacy_inversion.png", "privacy_gradient.png"} <= artifacts

    assert main(["run", "tiny.yaml"]) == 0  # nothing changed: reused
    out = capsys.readouterr().out
    assert "[privacy] up to date" in out or "nothing to do" in out
    assert len(_stage_runs(workdir)) == 1

    # a new budget re-runs only the privacy stage
    assert main(["run", "tiny.yaml", "--set", "privacy.inversion.steps=4"]) == 0
    out = capsys.readouterr().out
    assert "[teacher] up to date" in out and "[distill] up to date" in out
    assert "[privacy] running" in out and len(_stage_runs(workdir)) == 2

    # so does another attacker folder (its files are part of the fingerprint)
    others = workdir / "others"
    assert main(["run", "tiny.yaml", "--set", f"privacy.attacker=[{others}]"]) == 0
    assert "[privacy] running" in capsys.readouterr().out

    if dlib_missing() is None:  # and another judge
        assert main(["run", "tiny.yaml", "--set", "privacy.judge=dlib"]) == 0
        out = capsys.readouterr().out
        assert "[privacy] running" in out and "judge: dlib" in out


@pytest.mark.slow
def test_privacy_command_on_a_run_folder(workdir, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = workdir / "runs" / "tiny_privacy"
    if not (run_dir / "distill" / "student.pt").is_file():
        assert main(["run", "tiny.yaml"]) == 0
    others = workdir / "others"
    args = ["privacy", str(run_dir), "--attacker", str(others), "--targets", str(others)]
    budget = [
        "--set",
        "inversion.steps=2",
        "--set",
        "gradient.iterations=1",
        "--set",
        "gradient.batch_sizes=[1]",
        "--set",
        "attacked_people=2",
    ]
    assert main([*args, *budget, "--out", "report", "--json", "m.json"]) == 0
    out = capsys.readouterr().out
    assert "| float twin |" in out and "judge: the teacher" in out
    metrics = json.loads((workdir / "m.json").read_text())
    assert metrics["attacked.faces"] == 2 and "student.gradient_b1.psnr" in metrics
    assert (workdir / "report" / "privacy_inversion.png").is_file()

    # gradient leakage alone needs no attacker faces
    only = ["privacy", str(run_dir), "--targets", str(others), "--set", "attacks=[gradient]"]
    assert main([*only, *budget, "--out", "grad", "--json", "g.json"]) == 0
    metrics = json.loads((workdir / "g.json").read_text())
    assert metrics["attacker.faces"] == 0 and not any(".inversion" in k for k in metrics)
    if dlib_missing() is None:
        assert main([*only, *budget, "--judge", "dlib", "--out", "dlib", "--json", "d.json"]) == 0
        assert "judge: dlib" in capsys.readouterr().out
        assert 0 <= json.loads((workdir / "d.json").read_text())["judge.accept_genuine"] <= 1
    assert main([*only[:2], "--targets", str(others)]) == 2
    assert "--attacker" in capsys.readouterr().err

    assert main([*args, "--set", "inversion.stepz=2"]) == 2
    assert "inversion.stepz" in capsys.readouterr().err
    assert main([*args[:4], "--targets", "nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_privacy_folders_are_checked_before_anything_runs(tmp_path) -> None:
    from pipelines.core.config import ConfigError, validate_raw

    raw = {**TINY, "privacy": {"attacker": [str(tmp_path / "missing")]}}
    with pytest.raises(ConfigError, match=r"privacy\.attacker\[0\]: folder .*missing"):
        validate_raw(raw, "p.yaml")
    raw = {**TINY, "privacy": {"judge": str(tmp_path / "judge.ckpt")}}
    with pytest.raises(ConfigError, match=r"privacy\.judge: file .*judge\.ckpt"):
        validate_raw(raw, "p.yaml")
    raw = {
        **TINY,
        "stages": ["teacher", "distill", "export", "evaluate"],
        "privacy": {"attacker": [str(tmp_path / "missing")]},
    }
    assert validate_raw(raw, "p.yaml").privacy.attacker  # not run: not checked
