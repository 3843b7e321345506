"""``facekd ablate``: variants expanded from one file, run as sibling pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tiny_pipeline import tiny_pipeline

from pipelines.cli import main
from pipelines.core.config import ConfigError, load_config
from pipelines.orchestration.ablation import ablation_table, expand_ablation

ROOT = Path(__file__).resolve().parents[1]
ABLATION_KD = ROOT / "pipelines" / "ablation_kd.yaml"
# the real-data file, pointed at synthetic data so that it validates without ../shared
SYNTHETIC = [
    "data.train=synthetic",
    "data.extra_train=[]",
    "teacher.checkpoint=null",
    "distill.unlabelled=[]",
]


def test_ablation_kd_expands_into_one_pipeline_per_method() -> None:
    variants = expand_ablation(ABLATION_KD, SYNTHETIC)
    names = [v.name for v in variants]
    assert names[0] == "none" and "margin_distillation" in names and "cosine" in names
    assert {"rkd", "logit", "similarity_preserving"} <= set(names)
    by = {v.name: v.config for v in variants}
    for v in variants:
        c = v.config
        assert c.pipeline.name == f"ablation_kd-{v.name}"
        assert c.pipeline.experiment == "facekd-ablation-kd"
        assert c.output_dir() == Path("runs/ablation_kd") / v.name
        assert c.pipeline.tags == {
            "facekd.ablation": "ablation_kd",
            "facekd.ablation.variant": v.name,
        }
        assert v.shares_teacher  # one teacher stage for all
        student = "quicknet_small" if v.name.endswith("_quicknet_small") else "birealface"
        assert c.distill.student == student and c.distill.train.max_minutes == 50
    assert by["seed_quicknet_small"].distill.args == {}  # not the BiRealFace's width/depths
    # a variant's keys replace the base's (losses are not merged with the base's cosine)
    assert by["none"].distill.losses == {"arcface": {"weight": 1.0, "s": 32, "m": 0.3}}
    assert by["margin_distillation"].distill.losses == {
        "margin_distillation": {"weight": 1.0, "s": 64, "m_max": 0.5, "m_min": 0.2}
    }
    assert by["rkd"].distill.losses == {"rkd_distance": 1.0, "rkd_angle": 2.0}


def test_ablation_overrides_apply_to_every_variant_last(tmp_path: Path) -> None:
    variants = expand_ablation(
        ABLATION_KD,
        [*SYNTHETIC, "distill.train.epochs=2", "pipeline.output_dir=" + str(tmp_path)],
        only=["none", "cosine"],
    )
    assert [v.name for v in variants] == ["none", "cosine"]
    assert all(v.config.distill.train.epochs == 2 for v in variants)  # over the variant's 16
    assert variants[1].config.output_dir() == tmp_path / "cosine"
    with pytest.raises(ConfigError, match="no variant nope"):
        expand_ablation(ABLATION_KD, SYNTHETIC, only=["nope"])


def test_bad_variants_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"pipeline": {"name": "b"}, "variants": {"x": {"distill.losses": {"kd": 1}}}}
        )
    )
    with pytest.raises(ConfigError, match="(?s)variant x.*unknown loss 'kd'"):
        expand_ablation(bad)
    bad.write_text(yaml.safe_dump({"pipeline": {"name": "b"}, "variants": []}))
    with pytest.raises(ConfigError, match="variants"):
        expand_ablation(bad)
    # `facekd run` on an ablation file points to `facekd ablate`
    with pytest.raises(ConfigError, match="facekd ablate"):
        load_config(ABLATION_KD)


TINY = {
    **tiny_pipeline(
        **{
            "pipeline": {"name": "abl", "experiment": "facekd-ablation-test", "seed": 0},
            "stages": ["teacher", "distill"],
            "teacher.args.embedding_size": 16,
            "distill.args.width": 16,
            "distill.unlabelled": ["unlabelled"],
            "export": None,
            "evaluate": None,
        }
    ),
    "variants": {
        "none": {"distill.losses": {"arcface": {"weight": 1.0, "s": 16, "m": 0.2}}},
        "cosine_md": {  # + SEED: its bank is the cached teacher embeddings of all faces
            "distill.losses": {
                "cosine": 1.0,
                "margin_distillation": {"s": 16, "per": "class"},
                "seed": {"weight": 0.5, "T_s": 0.1, "T_t": 0.1},
            },
            "distill.train.labelled_share": 0.5,
        },
        "md": {"distill.losses": {"margin_distillation": {"s": 16}}},
    },
}


@pytest.mark.slow
def test_ablation_runs_sibling_pipelines_sharing_the_teacher(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from faces.synthetic import write_synthetic_faces

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_synthetic_faces(tmp_path / "unlabelled", 3, 4, seed=9)  # 12 faces, labels unused
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(TINY))
    torch.set_num_threads(1)
    assert main(["ablate", "abl.yaml"]) == 0
    out = capsys.readouterr().out
    assert "[teacher] up to date" in out  # the second variant reuses the first one's teacher

    runs_dir = tmp_path / "runs" / "abl"
    assert (runs_dir / "none" / "teacher").is_symlink()
    assert (runs_dir / "cosine_md" / "teacher").resolve() == (runs_dir / "teacher").resolve()
    rows = {r["variant"]: r for r in json.loads((runs_dir / "ablation.json").read_text())}
    assert rows["none"]["method"] == "none"
    assert rows["cosine_md"]["method"] == "cosine+margin_distillation+seed+unlabelled"
    labelled = rows["none"]["train_images"]
    assert rows["none"]["images_seen"] == rows["none"]["steps"] * 16
    # the unlabelled faces join only the variant with a label-free loss
    assert rows["cosine_md"]["train_images"] == labelled + 12
    assert "| none | none |" in (runs_dir / "ablation.md").read_text()
    # labelled-only distillation: no unlabelled faces in training, and the teacher's
    # embeddings of labelled + unlabelled faces (cached by cosine_md) are reused, not recomputed
    assert rows["md"]["train_images"] == labelled and rows["md"]["method"] == (
        "margin_distillation"
    )
    maps = list((runs_dir / "teacher" / "targets").glob("*/targets.json"))
    assert len(maps) == 1  # one target map shared by both distilling variants
    meta = json.loads(maps[0].read_text())
    assert meta["done"] == meta["shape"][0] == labelled + 12

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-ablation-test")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    parents = {
        r.data.tags["facekd.ablation.variant"]: r for r in runs if "facekd.stage" not in r.data.tags
    }
    assert set(parents) == {"none", "cosine_md", "md"}
    for variant, run in parents.items():
        assert run.data.tags["facekd.ablation"] == "abl"
        assert run.data.tags["facekd.pipeline"] == f"abl-{variant}"
        assert "mlflow.parentRunId" not in run.data.tags  # siblings, not nested
    assert parents["none"].data.tags["facekd.distill.method"] == "none"
    assert parents["cosine_md"].data.tags["facekd.distill.method"] == (
        "cosine+margin_distillation+seed+unlabelled"
    )
    distill = next(
        r
        for r in runs
        if r.data.tags.get("facekd.stage") == "distill"
        and r.data.tags.get("mlflow.parentRunId") == parents["cosine_md"].info.run_id
    )
    assert distill.data.metrics["train.loss_seed"] > 0  # every loss term is logged
    # running it again does nothing
    assert main(["ablate", "abl.yaml"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # running one variant again keeps the other variants' rows in the table, in file order
    assert main(["ablate", "abl.yaml", "--variants", "md"]) == 0
    again = json.loads((runs_dir / "ablation.json").read_text())
    in_file = list(yaml.safe_load((tmp_path / "abl.yaml").read_text())["variants"])
    assert [r["variant"] for r in again] == in_file and len(in_file) == 3
    assert next(r for r in again if r["variant"] == "none") == rows["none"]


def test_ablation_table() -> None:
    row = {
        "variant": "none",
        "method": "none",
        "eval_set": "x_heldout",
        "acc": 0.8,
        "acc_std": 0.02,
        "pytorch_acc": None,
        "pytorch_acc_std": None,
        "images_seen": 1000.0,
        "train_images": 50.0,
        "distill_minutes": 1.5,
    }
    table = ablation_table([row])
    assert "x_heldout acc" in table
    assert "| none | none | 0.8000 ± 0.0200 | - | 1,000 | 50 | 1.5 |" in table


@pytest.mark.shared
@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "faces" / "utk_unlabelled").is_dir()
    or not (ROOT.parent / "shared" / "weights" / "mobilefacenet_casia_068.ckpt").is_file(),
    reason="../shared is absent",
)
def test_ablation_kd_validates_against_the_real_data(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the file's paths are relative to the checkout
    variants = {v.name: v.config for v in expand_ablation(ABLATION_KD)}
    assert len(variants["cosine"].distill.unlabelled) == 19  # 18,577 unlabelled faces
    assert variants["cosine_labelled_only"].distill.unlabelled == []


def test_ablation_recipe_variants_have_twins_and_equal_budgets() -> None:
    from pipelines.orchestration.ablation import _twin_key

    path = ROOT / "pipelines" / "ablation_recipe.yaml"
    variants = {v.name: v.config for v in expand_ablation(path, SYNTHETIC)}
    assert {"today", "react", "init_twin", "react_init_twin", "fitnet"} <= set(variants)
    for name, c in variants.items():
        assert c.distill.control == "twin" and "twin" in c.stages, name
        assert c.distill.train.epochs == 1 and c.distill.train.max_steps is None, name
    # two-step variants start from the twin of the one-step variant: trained once, shared
    assert _twin_key(variants["init_twin"]) == _twin_key(variants["today"])
    assert _twin_key(variants["react_init_twin"]) == _twin_key(variants["react"])
    assert _twin_key(variants["react"]) != _twin_key(variants["today"])
