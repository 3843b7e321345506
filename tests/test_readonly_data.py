"""Data folders are read-only to facekd: a pipeline and ``facekd eval`` on writable ImageFolders
leave them byte for byte as they were (manifests and other caches go to the cache folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from tiny_pipeline import tiny_pipeline

from faces.synthetic import write_synthetic_faces
from pipelines.cli import main

pytestmark = pytest.mark.slow


def snapshot(root: Path) -> dict[str, tuple[str, int, int, bytes]]:
    """Every entry under ``root`` (hidden ones too): kind, mode, mtime and file bytes.

    Folder mtimes catch an entry that was made and removed again; access times are left out.
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath) / name if name != "." else Path(dirpath)
            st = path.lstat()
            kind = "dir" if path.is_dir() else "file"
            data = path.read_bytes() if kind == "file" else b""
            out[str(path.relative_to(root))] = (kind, st.st_mode, st.st_mtime_ns, data)
    return out


def test_pipeline_and_eval_leave_data_folders_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, facekd_cache: Path, capsys
) -> None:
    # people named alike in both folders leave training (id_0000..id_0005): 8 people remain
    train = write_synthetic_faces(tmp_path / "data" / "train", 14, 6, seed=1)
    held = write_synthetic_faces(tmp_path / "data" / "eval", 6, 4, seed=2)
    for folder in (train, held):
        assert os.access(folder, os.W_OK)  # writable: nothing but facekd's manners keeps it so
    before = {f: snapshot(f) for f in (train, held)}
    config = tiny_pipeline(
        **{
            "pipeline.name": "readonly",
            "data": {"train": str(train), "eval": str(held), "eval_pairs": 40},
        }
    )
    (tmp_path / "readonly.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["run", "readonly.yaml"]) == 0
    teacher = tmp_path / "runs" / "readonly" / "teacher" / "teacher.pt"
    assert teacher.is_file()
    for folder in (train, held):
        assert main(["eval", str(teacher), "--data", str(folder), "--n-pairs", "40"]) == 0
    capsys.readouterr()
    for folder in (train, held):
        assert snapshot(folder) == before[folder], f"{folder} was changed"
    # the listings were cached, in the cache folder
    assert len(list((facekd_cache / "manifests").glob("*.json"))) >= 2


def test_manifest_beside_the_data_only_when_asked(tmp_path: Path) -> None:
    from pipelines.core.config import load_config
    from pipelines.training.data import DataContext

    train = write_synthetic_faces(tmp_path / "faces", 6, 4, seed=3)
    held = write_synthetic_faces(tmp_path / "held", 4, 3, seed=4)
    data = {"train": str(train), "eval": [str(held)]}
    spec = {"pipeline": {"name": "beside"}, "stages": ["teacher"], "data": data}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    DataContext(load_config(path), tmp_path / "out").fingerprint()
    assert not (train / ".facekd").exists() and not (held / ".facekd").exists()
    config = load_config(path, ["data.manifest=beside"])
    context = DataContext(config, tmp_path / "out")
    context.fingerprint()
    context.eval_sets  # noqa: B018 - loads the evaluation folder
    assert (train / ".facekd" / "manifest.json").is_file()
    assert (held / ".facekd" / "manifest.json").is_file()
    with pytest.raises(Exception, match="data.manifest"):
        load_config(path, ["data.manifest=inside"])
