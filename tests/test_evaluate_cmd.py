"""``facekd eval``: the same metrics from a model artifact, its checkpoint and its ONNX export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from faces.data import FaceDataError, make_pairs, scan_image_folder
from pipelines.commands.evaluate import add_parser, main
from teachers.checkpoint import CheckpointError

EXIT_BAD_INPUT = 2


def _cli(argv: list[str]) -> int:
    """What ``facekd`` does with a sub-command: parse, run, bad input -> exit code 2."""
    parser = argparse.ArgumentParser(prog="facekd")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FaceDataError, CheckpointError) as exc:
        print(f"facekd: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from export.onnx_export import export_float_onnx, save_onnx
    from faces.synthetic import write_synthetic_faces
    from faces.verification_sets import write_bin
    from pipelines.core.artifacts import save_model
    from teachers.registry import create_teacher

    tmp = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = create_teacher("vit_face_micro", embedding_size=32).eval()
    stage = tmp / "runs" / "tiny" / "teacher"
    (stage / "checkpoints").mkdir(parents=True)
    artifact = save_model(
        stage / "teacher.pt", "teacher", "vit_face_micro", {"embedding_size": 32}, model
    )
    lightning = {
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {
            **{f"model.{k}": v for k, v in model.state_dict().items()},
            "head.weight": torch.zeros(4, 32),
        },
    }
    torch.save(lightning, stage / "checkpoints" / "last.ckpt")
    onnx_path = save_onnx(export_float_onnx(model), tmp / "teacher.onnx")

    root = write_synthetic_faces(tmp / "faces", 4, 4, seed=2)
    index = scan_image_folder(root)
    pairs = make_pairs(index.labels, 12, seed=0)
    raw = [(index.paths[i].read_bytes(), index.paths[j].read_bytes()) for i, j, _ in pairs]
    bin_path = write_bin(tmp / "tiny.bin", raw, pairs[:, 2].astype(bool))
    return {
        "artifact": artifact,
        "ckpt": stage / "checkpoints" / "last.ckpt",
        "onnx": onnx_path,
        "bin": bin_path,
        "folder": root,
        "n_images": len(np.unique(pairs[:, :2])),  # a .bin's repeated images are kept once
    }


def _json_metrics(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert _cli(["eval", *argv, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one JSON object, nothing else on stdout
    return json.loads(out[0])


def test_artifact_checkpoint_and_onnx_agree(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data", str(files["bin"])]
    pt = _json_metrics(capsys, [str(files["artifact"]), *data])
    onnx = _json_metrics(capsys, [str(files["onnx"]), *data])
    ckpt = _json_metrics(capsys, [str(files["ckpt"]), *data])
    assert pt["set"] == "tiny" and pt["n_pairs"] == 12 and pt["n_images"] == files["n_images"]
    assert pt["model_format"] == "facekd artifact" and onnx["model_format"] == "onnx"
    assert ckpt["model_format"].startswith("lightning checkpoint")
    keys = {"verify.tiny.acc", "verify.tiny.acc_std", "verify.tiny.auc", "verify.tiny.tar_far1e-3"}
    assert keys <= set(pt["metrics"])
    for other in (onnx, ckpt):
        for k in keys:
            assert other["metrics"][k] == pytest.approx(pt["metrics"][k], abs=1e-4), k


def test_table_output_and_folder_data(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", str(files["artifact"]), "--data", str(files["folder"]), "--n-pairs", "12"]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert "verify.faces.acc" in out and "12 pairs, 6 genuine" in out


def test_bad_input_gives_exit_code_2(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        ([str(tmp_path / "missing.pt"), "--data", str(files["bin"])], "does not exist"),
        ([str(files["artifact"]), "--data", str(tmp_path / "missing.bin")], "does not exist"),
        ([str(files["bin"]), "--data", str(files["bin"])], "unknown model format"),
        (
            [str(files["ckpt"]), "--data", str(files["bin"]), "--args", '{"a": 1}'],
            "--args goes with",
        ),
        ([str(files["artifact"]), "--data", str(files["bin"]), "--arch", "x"], "drop --arch"),
    ]
    for argv, message in cases:
        assert _cli(["eval", *argv]) == EXIT_BAD_INPUT, argv
        assert message in capsys.readouterr().err
    lone = tmp_path / "lone" / "checkpoints"
    lone.mkdir(parents=True)
    (lone / "last.ckpt").write_bytes(files["ckpt"].read_bytes())
    assert main([str(lone / "last.ckpt"), "--data", str(files["bin"])]) == EXIT_BAD_INPUT
    assert "pass --arch NAME" in capsys.readouterr().err
    args = ["--arch", "vit_face_micro", "--args", '{"embedding_size": 32}']
    assert main([str(lone / "last.ckpt"), "--data", str(files["bin"]), *args]) == 0
    capsys.readouterr()


def test_json_report_fields(files: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    report = _json_metrics(capsys, [str(files["onnx"]), "--data", str(files["bin"])])
    assert set(report) >= {"model", "data", "set", "n_images", "n_pairs", "metrics", "seconds"}
    assert np.isfinite(list(report["metrics"].values())).all()


def _other_artifact(path: Path, seed: int, embedding_size: int = 32) -> Path:
    from pipelines.core.artifacts import save_model
    from teachers.registry import create_teacher

    torch.manual_seed(seed)
    model = create_teacher("vit_face_micro", embedding_size=embedding_size).eval()
    args = {"embedding_size": embedding_size}
    return save_model(path, "teacher", "vit_face_micro", args, model)


def test_reference_gives_delta_cosines_and_noise_floor(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data", str(files["bin"])]
    ref = ["--reference", str(files["artifact"]), "--noise-draws", "2"]
    same = _json_metrics(capsys, [str(files["onnx"]), *data, *ref])
    m = same["metrics"]
    assert same["reference"]["model_format"] == "facekd artifact"
    assert m["parity.cosine_min"] > 0.9999 and m["parity.share_cosine_099"] == 1.0
    assert m["verify.tiny.acc_reference"] == pytest.approx(m["verify.tiny.acc"], abs=1e-4)
    assert abs(m["verify.tiny.acc_delta_pt"]) < 1e-2
    assert same["noise_of"] == "reference" and len(same["noise_deltas_pt"]) == 2
    assert m["verify.tiny.noise_delta_pt_max"] == max(abs(d) for d in same["noise_deltas_pt"])

    other = _other_artifact(tmp_path / "other.pt", seed=7)
    alone = _json_metrics(capsys, [str(other), *data])["metrics"]["verify.tiny.acc"]
    own = _json_metrics(capsys, [str(files["artifact"]), *data])["metrics"]["verify.tiny.acc"]
    vs = _json_metrics(capsys, [str(files["artifact"]), *data, "--reference", str(other)])
    assert vs["metrics"]["parity.cosine_min"] < 0.9  # another network: other embeddings
    assert vs["metrics"]["verify.tiny.acc_delta_pt"] == pytest.approx(100 * (own - alone))
    assert "noise_deltas_pt" not in vs  # no draws asked

    argv = ["eval", str(files["onnx"]), *data, *ref]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    assert f"ref    {files['artifact']}" in out and "reference at 1e-6 input noise" in out


def test_perturbed_model_moves_with_noise_of_the_model_itself(
    files: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    report = _json_metrics(
        capsys, [str(files["artifact"]), "--data", str(files["bin"]), "--noise-draws", "1"]
    )
    assert report["noise_of"] == "model" and len(report["noise_deltas_pt"]) == 1
    assert "parity.cosine_min" not in report["metrics"]


def test_bad_reference_gives_exit_code_2(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data", str(files["bin"])]
    wide = _other_artifact(tmp_path / "wide.pt", seed=1, embedding_size=16)
    cases = [
        (["--reference", str(tmp_path / "none.pt")], f"reference model {tmp_path / 'none.pt'}"),
        (["--reference", str(wide)], "16-d, the model's 32-d"),
        (["--noise-draws", "-1"], "--noise-draws must be 0 or more"),
    ]
    for extra, message in cases:
        assert _cli(["eval", str(files["artifact"]), *data, *extra]) == EXIT_BAD_INPUT, extra
        assert message in capsys.readouterr().err


def test_several_sets_in_one_table(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eval_bench import make_bench

    bench = make_bench(tmp_path / "bench")
    model = str(files["artifact"])
    data = [
        *("--data", str(bench["bin"])),
        *("--data", f"{bench['folder']},pairs={bench['csv']},name=cross"),
        *("--data", f"{bench['lfw']},pairs={bench['pairs_txt']}"),
        *("--data", f"{bench['folder']},name=folder"),
    ]
    report = _json_metrics(capsys, [model, *data, "--n-pairs", "20"])
    m = report["metrics"]
    names = ["people", "cross", "lfw", "folder"]
    assert [s["set"] for s in report["sets"]] == names and report["set"] == ",".join(names)
    assert [s["own_folds"] for s in report["sets"]] == [False, True, False, False]
    assert m["verify.mean.acc"] == pytest.approx(np.mean([m[f"verify.{n}.acc"] for n in names]))
    assert report["n_images"] <= 32  # people/, the .bin and the CSV share their 16 faces
    alone = _json_metrics(
        capsys, [model, "--data", str(bench["lfw"]), "--pairs", str(bench["pairs_txt"])]
    )
    assert alone["metrics"]["verify.lfw.acc"] == pytest.approx(m["verify.lfw.acc"])
    csv_alone = _json_metrics(
        capsys, [model, "--data", str(bench["folder"]), "--pairs", str(bench["csv"])]
    )
    assert csv_alone["set"] == "cross" and csv_alone["sets"][0]["own_folds"]
    assert csv_alone["metrics"]["verify.cross.acc"] == pytest.approx(m["verify.cross.acc"])

    argv = [
        "eval",
        model,
        *data,
        "--n-pairs",
        "20",
        "--threshold-from",
        "people",
        "--threshold-far",
        "0.1",
    ]
    assert _cli(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if line.split()[:1]]
    assert all(name in rows for name in [*names, "mean"]) and "acc@FAR" in out
    assert "folds from the file" in out and "verify.threshold_at_far" in out

    bad = [
        ([*data, "--pairs", str(bench["csv"])], "--pairs goes with a single --data"),
        (["--data", f"{bench['folder']},pair={bench['csv']}"], "expected PATH[,pairs=FILE]"),
        (["--data", str(bench["bin"]), "--data", str(bench["bin"])], "two verification sets"),
        ([*data, "--n-pairs", "20", "--threshold-from", "nope"], "--threshold-from nope"),
    ]
    for extra, message in bad:
        assert _cli(["eval", model, *extra]) == EXIT_BAD_INPUT, extra
        assert message in capsys.readouterr().err
