"""Feature distillation (distill.features): FitNets hints and attention transfer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_pipeline import tiny_pipeline, write_pipeline
from torch import nn

from distill.features import AttentionTransferLoss, FitNetLoss, layer_shapes
from distill.losses import DISTILL_LOSSES, WeightedLoss, uses_teacher
from distill.module import Distiller
from students.registry import create_student
from teachers.registry import create_teacher


def _student() -> nn.Module:
    return create_student("birealface", width=16, depths=[1, 1, 1], embedding_size=32)


def _teacher() -> nn.Module:
    torch.manual_seed(1)
    return create_student("birealface", width=24, depths=[1, 1, 1], embedding_size=32).eval()


def _batch(n: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8)


def test_registered_and_use_the_teacher() -> None:
    assert {"fitnet", "attention_transfer"} <= set(DISTILL_LOSSES.names())
    assert uses_teacher({"fitnet": {"layers": {"stem": "stem"}}})


def test_layers_are_required() -> None:
    with pytest.raises(ValueError, match="layers"):
        FitNetLoss()
    with pytest.raises(ValueError, match="layers"):
        AttentionTransferLoss(layers=[["stem"]])


def test_unknown_layer_names_the_layers_there_are() -> None:
    loss = FitNetLoss(layers={"stages.9": "stem"})
    with pytest.raises(ValueError) as err:
        loss.attach(_student(), _teacher())
    text = str(err.value)
    assert "student has no layer 'stages.9'" in text and "stages.0" in text and "16x28x28" in text
    loss = AttentionTransferLoss(layers={"stem": "nowhere"})
    with pytest.raises(ValueError, match="teacher has no layer 'nowhere'.*stem"):
        loss.attach(_student(), _teacher())


def test_attention_transfer_is_zero_on_the_same_maps_and_positive_otherwise() -> None:
    model = _teacher()
    loss = AttentionTransferLoss(layers={"stem": "stem", "stages.1": "stages.1"})
    loss.attach(model, model)
    x = torch.randn(3, 3, 112, 112)
    emb = model(x)
    assert float(loss(emb, emb, None).detach()) == pytest.approx(0.0, abs=1e-7)
    student = _student()
    other = AttentionTransferLoss(layers={"stem": "stem"})
    other.attach(student, model)
    model(x)
    assert float(other(student(x), None, None)) > 1e-4


def test_fitnet_adapters_train_and_maps_of_other_sizes_are_pooled() -> None:
    """A 112x112 student against MobileFaceNet's 112x96 crop: 28x28 maps pooled to 28x24."""
    student, teacher = _student(), create_teacher("mobilefacenet").eval()
    assert layer_shapes(teacher)["blocks.4"][1:] == (28, 24)
    loss = FitNetLoss(layers={"stem": "blocks.4", "stages.2": "blocks.14"})
    loss.attach(student, teacher)
    assert [a[0].out_channels for a in loss.adapters] == [64, 128]
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        teacher(x)
    value = loss(student(x), None, None)
    value.backward()
    assert float(value) > 0
    assert loss.adapters[0][0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.stem.parameters())


def test_distiller_runs_the_teacher_beside_cached_targets_and_releases_hooks() -> None:
    student, teacher = _student(), _teacher()
    terms = {
        "cosine": 1.0,
        "fitnet": {"weight": 0.5, "layers": {"stages.1": "stages.1"}},
        "attention_transfer": {"weight": 10.0, "layers": [["stem", "stem"]]},
    }
    cached = torch.randn(8, 2, 32)
    module = Distiller(student, teacher, terms, cached=cached)
    batch = (_batch(4), torch.arange(4), torch.full((4,), -1))
    total = module.training_step(batch, 0)
    assert torch.isfinite(total) and float(total) > 0
    total.backward()
    adapters = [p for p in module.trainable_parameters() if p.grad is not None]
    assert any(p is module.features[0].adapters[0][0].weight for p in adapters)
    module.on_train_end()
    assert all(not m._forward_hooks for m in student.modules())
    assert all(not m._forward_hooks for m in teacher.modules())


def test_feature_loss_without_a_teacher_is_refused() -> None:
    with pytest.raises(ValueError, match="needs the teacher"):
        Distiller(_student(), None, {"fitnet": {"layers": {"stem": "stem"}}}, cached=torch.ones(2))


def test_weighted_loss_builds_feature_terms() -> None:
    loss = WeightedLoss({"attention_transfer": {"weight": 2.0, "layers": {"stem": "stem"}}})
    assert loss.weights == {"attention_transfer": 2.0}


@pytest.mark.slow
def test_pipeline_with_feature_losses_exports_and_a_bad_layer_exits_2(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    losses = {
        "cosine": 1.0,
        "fitnet": {"weight": 1.0, "layers": {"stages.0": "backbone.patch_embed.proj"}},
        "attention_transfer": {"weight": 10.0, "layers": {"stem": "backbone.patch_embed.proj"}},
    }
    config = tiny_pipeline(**{"pipeline.name": "feat", "distill.losses": losses})
    write_pipeline(tmp_path, config, "feat.yaml")
    assert main(["run", "feat.yaml"]) == 0
    run = tmp_path / "runs" / "feat"
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-test")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    stage = next(r for r in runs if r.data.tags.get("facekd.stage") == "distill")
    assert stage.data.metrics["train.loss_fitnet"] > 0
    assert stage.data.metrics["train.loss_attention_transfer"] > 0
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert report["bconv_coverage"] == 1.0
    capsys.readouterr()
    losses["fitnet"]["layers"] = {"stages.7": "backbone.patch_embed.proj"}
    config = tiny_pipeline(**{"pipeline.name": "feat_bad", "distill.losses": losses})
    write_pipeline(tmp_path, config, "bad.yaml")
    assert main(["run", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert "distill.losses.fitnet.layers: the student has no layer 'stages.7'" in err
    assert "stages.0 32x28x28" in err
    assert not (tmp_path / "runs" / "feat_bad" / "distill" / "student.pt").exists()
