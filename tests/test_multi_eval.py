"""Several evaluation sets in one pipeline: config, shared images, metrics, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from eval_bench import make_bench
from tiny_pipeline import tiny_pipeline

from faces.evaluate import FarThreshold, evaluate_sets, set_scores
from faces.verification import verification_metrics
from faces.verification_sets import SetSpec, load_verification_set, load_verification_sets
from pipelines.core.config import ConfigError, load_config
from pipelines.evaluation.sets import csv_identities
from pipelines.training.data import DataContext


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bench(tmp_path_factory.mktemp("bench"))


def _eval_list(bench: dict[str, Path]) -> list:
    return [
        str(bench["folder"]),
        {"path": str(bench["bin"]), "name": "people_bin"},
        {"path": str(bench["folder"]), "pairs_file": str(bench["csv"])},
        {"path": str(bench["lfw"]), "pairs_file": str(bench["pairs_txt"]), "name": "lfw"},
    ]


def _write(tmp_path: Path, data: dict) -> Path:
    raw = {"pipeline": {"name": "multi", "seed": 0}, "data": {"eval_pairs": 20, **data}}
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sets_load_together_and_share_images(tmp_path: Path, bench: dict[str, Path]) -> None:
    data = {"train": str(bench["folder"]), "eval": _eval_list(bench)}
    ctx = DataContext(load_config(_write(tmp_path, data)), tmp_path / "out")
    assert ctx.eval_names == ["people", "people_bin", "cross", "lfw"]
    sets = ctx.eval_sets
    assert [s.name for s in sets] == ctx.eval_names
    assert all(s.images is sets[0].images for s in sets)
    # people/, people.bin and cross.csv hold the same 16 files; lfw/ holds 16 others
    separately = [
        load_verification_set(bench["folder"], n_pairs=20),
        load_verification_set(bench["bin"]),
        load_verification_set(bench["folder"], pairs_file=bench["csv"]),
        load_verification_set(bench["lfw"], pairs_file=bench["pairs_txt"]),
    ]
    assert sum(len(s.images) for s in separately) > len(ctx.eval_images)
    assert len(ctx.eval_images) <= 32
    for one, pooled in zip(separately, sets, strict=True):  # same pairs, same pixels
        assert torch.equal(one.images[one.pairs[:, 0]], pooled.images[pooled.pairs[:, 0]])
        assert torch.equal(one.images[one.pairs[:, 1]], pooled.images[pooled.pairs[:, 1]])
        np.testing.assert_array_equal(one.pairs[:, 2], pooled.pairs[:, 2])
    # the .bin holds the pairs the CSV names: same images, and the CSV's folds come along
    np.testing.assert_array_equal(sets[1].pairs, sets[2].pairs)
    assert sets[1].folds is None and sets[2].folds.tolist() == [k % 4 for k in range(20)]
    # the eval folder's people are left out of training (train = that same folder here)
    assert ctx.train_index is not None and len(ctx.train_index.identities) == 0
    people = {p.name for p in bench["folder"].iterdir() if p.is_dir()}
    assert csv_identities(bench["csv"]) == people  # a CSV's people: first folder of its paths
    only_csv = {"train": str(bench["folder"]), "eval": [_eval_list(bench)[2]]}
    ctx_csv = DataContext(load_config(_write(tmp_path, only_csv)), tmp_path / "out2")
    assert len(ctx_csv.train_index.identities) == 0 and ctx_csv.eval_index is None
    fp = ctx.fingerprint()
    assert [s["name"] for s in fp["eval"]] == ctx.eval_names and fp["eval"][0]["pairs"] == 20
    assert ctx.probe_batch(40).shape == (len(ctx.eval_images), 3, 112, 112)


def test_single_set_keeps_its_fingerprint_and_names(tmp_path: Path, bench: dict) -> None:
    data = {"train": "synthetic", "eval": str(bench["bin"])}
    ctx = DataContext(load_config(_write(tmp_path, data)), tmp_path / "out")
    fp = ctx.fingerprint()
    assert fp["eval"]["path"] == str(bench["bin"].resolve()) and fp["eval_pairs"] is None
    assert "threshold" not in fp and ctx.eval_names == ["people"] and ctx.eval_name == "people"
    assert ctx.far_threshold is None


def test_each_image_is_embedded_once_per_model(bench: dict[str, Path]) -> None:
    specs = [SetSpec(str(bench["bin"])), SetSpec(str(bench["folder"]), "c", str(bench["csv"]))]
    sets = load_verification_sets(specs)
    seen: list[int] = []

    def embed(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return batch.reshape(len(batch), 3, -1).mean(axis=2)

    scores = set_scores(embed, sets)
    used = len(np.unique(np.concatenate([s.pairs[:, :2] for s in sets])))
    assert sum(seen) == 2 * used  # image and mirror, once for both sets
    metrics = evaluate_sets(embed, sets, FarThreshold("people", 0.1))
    assert metrics["verify.mean.acc"] == pytest.approx(
        (metrics["verify.people.acc"] + metrics["verify.c.acc"]) / 2
    )
    # the CSV's fold column drives its protocol: 4 folds, not 10 contiguous ones
    by_folds = verification_metrics(scores["c"], sets[1].pairs[:, 2], folds=sets[1].folds)
    assert metrics["verify.c.acc"] == pytest.approx(by_folds["acc"])
    t = metrics["verify.threshold_at_far"]
    for name, s in (("people", sets[0]), ("c", sets[1])):
        expected = np.mean((scores[name] >= t) == s.pairs[:, 2].astype(bool))
        assert metrics[f"verify.{name}.acc_at_far"] == pytest.approx(expected)
    assert metrics["verify.people.far_at_far"] <= 0.1


def test_config_errors_name_the_key(tmp_path: Path, bench: dict[str, Path]) -> None:
    def error(data: dict) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(_write(tmp_path, data))
        return str(info.value)

    twice = [str(bench["folder"]), str(bench["folder"])]
    assert "two sets are named 'people'" in error({"eval": twice})
    msg = error({"eval": [str(bench["bin"]), {"path": str(tmp_path / "gone")}]})
    assert "data.eval[1].path" in msg and "gone" in msg
    msg = error({"eval": [{"path": str(bench["folder"]), "pairs_file": str(tmp_path / "x.csv")}]})
    assert "data.eval[0].pairs_file" in msg and "x.csv" in msg
    msg = error({"eval": [str(bench["bin"])], "eval_pairs_file": str(bench["csv"])})
    assert "data.eval_pairs_file" in msg and "its own" in msg
    msg = error({"eval": [{"path": str(bench["bin"]), "name": "mean"}]})
    assert "'mean' is reserved" in msg
    msg = error({"eval": str(bench["bin"]), "threshold_from": "lfw"})
    assert "data.threshold_from" in msg and "'lfw'" in msg and "people" in msg
    msg = error({"eval": [str(bench["bin"]), {"path": str(bench["bin"]), "name": "a+b"}]})
    assert "data.eval[1].name: 'a+b' is not a valid set name" in msg
    assert "data.eval" in error({"eval": []})
    msg = error({"eval": [str(bench["bin"]), {"path": str(bench["bin"]), "pair_file": "x"}]})
    assert "data.eval: Value error, entry 1: pair_file: unknown key" in msg
    assert "entry 0: path: Field required" in error({"eval": [{"name": "x"}]})


SETS = ("people", "people_bin", "cross", "lfw")  # ImageFolder, .bin, CSV, LFW pairs.txt


@pytest.mark.slow
def test_pipeline_scores_every_set(tmp_path: Path, bench: dict[str, Path], monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = tiny_pipeline(
        **{
            "pipeline": {"name": "multi", "experiment": "facekd-multi", "seed": 0},
            "stages": None,
            "data.eval": _eval_list(bench),
            "data.threshold_from": "people_bin",
            "data.threshold_far": 0.1,
            "data.eval_pairs": None,
            "data.eval_fraction": None,
            "evaluate.instances": 1,
        }
    )
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", "multi.yaml"]) == 0
    out = capsys.readouterr().out
    for row in ("people 10-fold acc", "people_bin 10-fold acc", "cross 10-fold", "mean acc"):
        assert row in out
    assert "teacher (TFLite fp32)" in out and "teacher (TFLite int8)" in out
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("facekd-multi")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    stages = {
        r.data.tags["facekd.stage"]: r.data.metrics for r in runs if "facekd.stage" in r.data.tags
    }
    parent = next(r for r in runs if "facekd.stage" not in r.data.tags)
    for stage in ("teacher", "distill", "evaluate"):
        m = stages[stage]
        for name in SETS:
            assert 0.0 <= m[f"verify.{name}.acc"] <= 1.0
            assert f"verify.{name}.acc_at_far" in m
        mean = np.mean([m[f"verify.{n}.acc"] for n in SETS])
        assert m["verify.mean.acc"] == pytest.approx(mean)
    e = stages["evaluate"]
    for ref in ("teacher_float", "teacher_int8"):  # reference rows: accuracy, speed, size
        for name in (*SETS, "mean"):
            assert 0.0 <= e[f"reference.{ref}.verify.{name}.acc"] <= 1.0
        assert e[f"reference.{ref}.bench.fps"] > 0 and e[f"reference.{ref}.model.size_bytes"] > 0
    assert (
        e["reference.teacher_int8.model.size_bytes"] < e["reference.teacher_float.model.size_bytes"]
    )
    # the float TFLite teacher scores as the PyTorch teacher does, on every set
    t = stages["teacher"]
    for name in SETS:
        assert e[f"reference.teacher_float.verify.{name}.acc"] == pytest.approx(
            t[f"verify.{name}.acc"], abs=0.051
        )
    assert parent.data.tags["facekd.eval_set"] == ",".join(SETS)
    assert "reference.teacher_int8.verify.mean.acc" in parent.data.metrics
    from pipelines.tracking.compare import compare

    rows, metric = compare(["facekd-multi"], None, tmp_path / "pareto.png", log_to_mlflow=False)
    assert metric == "verify.mean.acc"
    assert [r.kind for r in rows].count("reference") == 2 and len(rows) == 3
    assert "teacher.verify.mean.acc" in parent.data.metrics
    assert "pytorch.verify.lfw.acc" in parent.data.metrics
    assert "export.acc_delta_pt" in parent.data.metrics
