"""Tests for pipelines.core.config (schema, overrides, path checks) and the CLI's error path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.core.config import (
    DEFAULT_STAGES,
    ConfigError,
    PipelineConfig,
    apply_override,
    flatten,
    load_config,
)


def _write(tmp_path: Path, data: dict | str, name: str = "pipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ---- loading and defaults ------------------------------------------------------------------


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"pipeline": {"name": "t"}}))
    assert isinstance(cfg, PipelineConfig)
    assert cfg.pipeline.name == "t"
    assert cfg.pipeline.experiment == "facekd"
    assert cfg.pipeline.seed == 0
    assert cfg.stages == list(DEFAULT_STAGES)
    assert cfg.data.train == "synthetic"
    assert cfg.data.eval_fraction == 0.25
    assert cfg.teacher.model == "vit_face_micro"
    assert cfg.teacher.train.optimizer == "adamw"
    assert cfg.teacher.train.weight_decay == 0.05  # teacher override of the TrainConfig default
    assert cfg.teacher.train.head.name == "arcface"
    assert cfg.distill.student == "birealface"
    assert cfg.distill.losses == {"cosine": 1.0}
    assert cfg.distill.train.lr == 2e-3
    assert cfg.distill.train.epochs == 10
    assert cfg.output_dir() == Path("runs") / "t"


def test_output_dir_from_config(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"pipeline": {"name": "t", "output_dir": "x/y"}}))
    assert cfg.output_dir() == Path("x/y")


def test_shipped_demo_pipeline_is_valid() -> None:
    demo = Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"
    cfg = load_config(demo)
    assert cfg.pipeline.name == "demo"
    assert cfg.distill.args["depths"] == [2, 2, 2]


def test_missing_pipeline_section_errors(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, {"stages": ["teacher"]}))
    assert str(tmp_path / "pipe.yaml") in msg
    assert "pipeline" in msg


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    msg = _error(_write(tmp_path, "- a\n- b\n"))
    assert str(tmp_path / "pipe.yaml") in msg
    assert "mapping" in msg


# ---- unknown keys and wrong types ----------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "bogus": 1})
    msg = _error(path)
    assert str(path) in msg
    assert "bogus: unknown key" in msg


def test_unknown_nested_key_names_full_path(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "teacher": {"train": {"foo": 3}}})
    msg = _error(path)
    assert str(path) in msg
    assert "teacher.train.foo: unknown key" in msg


def test_wrong_type_names_key_path_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "distill": {"train": {"epochs": "abc"}}})
    msg = _error(path)
    assert str(path) in msg
    assert "distill.train.epochs:" in msg
    assert "'abc'" in msg


def test_out_of_range_value(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "data": {"eval_fraction": 1.5}})
    assert "data.eval_fraction:" in _error(path)
    path = _write(
        tmp_path, {"pipeline": {"name": "t"}, "distill": {"train": {"labelled_share": 1}}}
    )
    assert "distill.train.labelled_share:" in _error(path)


def test_unknown_distill_loss_lists_known(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "distill": {"losses": {"kl": 1.0}}})
    msg = _error(path)
    assert "distill.losses" in msg
    assert "'kl'" in msg
    assert "cosine" in msg and "l2" in msg


def test_empty_distill_losses_error(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "distill": {"losses": {}}})
    assert "distill.losses" in _error(path)


@pytest.mark.parametrize(
    "stages",
    [["distill", "teacher"], ["teacher", "teacher"], ["evaluate", "export"], []],
)
def test_bad_stage_lists(tmp_path: Path, stages: list[str]) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "stages": stages})
    msg = _error(path)
    assert str(path) in msg
    assert "stages" in msg


def test_unknown_stage_name(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "stages": ["teacher", "deploy"]})
    assert "stages.1" in _error(path)


def test_subset_of_stages_in_order_is_fine(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "stages": ["distill", "evaluate"]})
    cfg = load_config(path)
    assert cfg.stages == ["distill", "evaluate"]


# ---- paths ---------------------------------------------------------------------------------


def test_missing_train_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_faces"
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "data": {"train": str(missing)}})
    msg = _error(path)
    assert str(path) in msg
    assert "data.train" in msg
    assert str(missing) in msg


def test_missing_eval_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no_eval"
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "data": {"eval": str(missing)}})
    msg = _error(path)
    assert "data.eval" in msg and str(missing) in msg


def test_existing_train_folder_accepted(tmp_path: Path) -> None:
    (tmp_path / "faces").mkdir()
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "data": {"train": str(tmp_path / "faces")}})
    assert load_config(path).data.train == str(tmp_path / "faces")


def test_train_path_that_is_a_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "faces.txt"
    f.write_text("x")
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "data": {"train": str(f)}})
    assert "data.train" in _error(path)


def test_missing_unlabelled_folder(tmp_path: Path) -> None:
    missing = tmp_path / "unl"
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "distill": {"unlabelled": [str(missing)]}})
    msg = _error(path)
    assert "distill.unlabelled[0]" in msg and str(missing) in msg


def test_missing_teacher_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "teacher.pt"
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "teacher": {"checkpoint": str(missing)}})
    msg = _error(path)
    assert str(path) in msg
    assert "teacher.checkpoint" in msg
    assert str(missing) in msg


def test_existing_teacher_checkpoint_accepted(tmp_path: Path) -> None:
    ckpt = tmp_path / "teacher.pt"
    ckpt.write_bytes(b"x")
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "teacher": {"checkpoint": str(ckpt)}})
    assert load_config(path).teacher.checkpoint == str(ckpt)


# ---- file-level errors ---------------------------------------------------------------------


def test_invalid_yaml_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "pipeline: {name: t\nstages: [teacher\n")
    msg = _error(path)
    assert str(path) in msg
    assert "not valid YAML" in msg


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    msg = _error(missing)
    assert str(missing) in msg
    assert "does not exist" in msg


# ---- overrides -----------------------------------------------------------------------------


def test_apply_override_parses_yaml_values_and_creates_keys() -> None:
    raw: dict = {"pipeline": {"name": "t"}}
    apply_override(raw, "distill.train.epochs=3")
    apply_override(raw, "distill.train.lr=0.01")
    apply_override(raw, "export.allow_partial=true")
    apply_override(raw, "distill.args.depths=[1, 2, 3]")
    apply_override(raw, "pipeline.name=other")
    apply_override(raw, "a.b.c=")
    assert raw["distill"]["train"]["epochs"] == 3
    assert isinstance(raw["distill"]["train"]["epochs"], int)
    assert raw["distill"]["train"]["lr"] == 0.01
    assert isinstance(raw["distill"]["train"]["lr"], float)
    assert raw["export"]["allow_partial"] is True
    assert raw["distill"]["args"]["depths"] == [1, 2, 3]
    assert raw["pipeline"] == {"name": "other"}
    assert raw["a"] == {"b": {"c": ""}}


def test_override_value_may_contain_equals() -> None:
    raw: dict = {}
    apply_override(raw, "pipeline.name=a=b")
    assert raw == {"pipeline": {"name": "a=b"}}


@pytest.mark.parametrize("bad", ["noequals", "a..b=1", ".a=1", "a.=1", "=1"])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        apply_override({}, bad)


def test_override_through_non_mapping() -> None:
    raw = {"pipeline": {"name": "t"}}
    with pytest.raises(ConfigError, match="pipeline.name is not a mapping"):
        apply_override(raw, "pipeline.name.x=1")


def test_override_invalid_yaml_value() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_override({}, "a.b=[1, 2")


def test_load_config_with_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}, "distill": {"train": {"epochs": 5}}})
    cfg = load_config(
        path,
        overrides=[
            "distill.train.epochs=2",
            "distill.train.lr=0.5",
            "export.allow_partial=yes",
            "stages=[distill, export]",
            "distill.args.depths=[1, 1]",
        ],
    )
    assert cfg.distill.train.epochs == 2
    assert cfg.distill.train.lr == 0.5
    assert cfg.export.allow_partial is True
    assert cfg.stages == ["distill", "export"]
    assert cfg.distill.args == {"depths": [1, 1]}
    # the file itself is untouched by overrides
    assert load_config(path).distill.train.epochs == 5


def test_override_is_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}})
    msg = _error(path, ["distill.train.epochs=abc"])
    assert "distill.train.epochs" in msg
    msg = _error(path, ["teacher.train.nope=1"])
    assert "teacher.train.nope: unknown key" in msg


def test_malformed_override_via_load_config(tmp_path: Path) -> None:
    path = _write(tmp_path, {"pipeline": {"name": "t"}})
    assert "noequals" in _error(path, ["noequals"])


# ---- flatten -------------------------------------------------------------------------------


def test_flatten_dict() -> None:
    flat = flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": [{"g": 3}, [4]]})
    assert flat == {"a.b": 1, "a.c.d": "x", "e": [1, 2], "f.0.g": 3, "f.1": [4]}


def test_flatten_config(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"pipeline": {"name": "t"}}))
    flat = flatten(cfg)
    assert flat["pipeline.name"] == "t"
    assert flat["distill.train.epochs"] == 10
    assert flat["teacher.train.head.name"] == "arcface"
    assert flat["distill.losses.cosine"] == 1.0
    assert flat["stages"] == list(DEFAULT_STAGES)
    assert all(not isinstance(v, dict) for v in flat.values())


# ---- CLI error path ------------------------------------------------------------------------


def test_cli_bad_config_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import EXIT_BAD_INPUT, main

    path = _write(tmp_path, {"pipeline": {"name": "t"}, "teacher": {"train": {"foo": 1}}})
    assert main(["run", str(path)]) == 2 == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    # (importing torch may print a warning first; the error is the rest of stderr)
    msg = err[err.index("facekd: error:") :]
    assert str(path) in msg.splitlines()[0]
    assert "teacher.train.foo: unknown key" in msg


def test_cli_bad_override_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    path = _write(tmp_path, {"pipeline": {"name": "t"}})
    assert main(["run", str(path), "--set", "distill.train.epochs=abc"]) == 2
    err = capsys.readouterr().err
    assert "facekd: error:" in err and "distill.train.epochs" in err


def test_cli_missing_pipeline_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    missing = tmp_path / "missing.yaml"
    assert main(["run", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "facekd: error:" in err
    assert str(missing) in err
