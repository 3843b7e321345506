"""Broken and hostile input through the real command line: exit code 2, a message naming the
file, key or value, and no stage output recorded as good."""

from __future__ import annotations

import pickle
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from faces.recordio import write_recordio
from faces.synthetic import write_synthetic_faces
from faces.verification_sets import write_bin
from pipelines.cli import main


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return write_synthetic_faces(
        tmp_path_factory.mktemp("hostile") / "faces", identities=8, images_per_identity=4
    )


@pytest.fixture()
def work(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _config(work: Path, train: Path | str, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "pipeline": {"name": "hostile", "experiment": "hostile", "output_dir": str(work / "out")},
        "stages": ["teacher"],
        "data": {"train": str(train), "eval_pairs": 20, "eval_fraction": 0.25},
        "teacher": {
            "model": "vit_face_micro",
            "args": {"embedding_size": 32},
            "train": {"epochs": 1, "batch_size": 8, "head": {"s": 16.0}},
        },
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def _run(work: Path, config: dict[str, Any] | str) -> int:
    path = work / "pipeline.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return main(["run", str(path)])


def _refused(work: Path, config: dict[str, Any] | str, capsys, *expected: str) -> str:
    assert _run(work, config) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert not list((work / "out").glob("*/stage.json")), "a stage recorded output as good"
    return err


def _copy(faces: Path, work: Path) -> Path:
    return Path(shutil.copytree(faces, work / "faces"))


def test_invalid_yaml(work: Path, capsys) -> None:
    _refused(work, "pipeline: [name: x\n", capsys, "pipeline.yaml")


def test_unknown_key_and_wrong_type(work: Path, faces: Path, capsys) -> None:
    _refused(work, _config(work, faces, data={"bogus": 1}), capsys, "data.bogus", "unknown key")
    bad = _config(work, faces)
    bad["teacher"]["train"]["epochs"] = "many"
    _refused(work, bad, capsys, "teacher.train.epochs", "many")


def test_missing_data_folder(work: Path, capsys) -> None:
    _refused(work, _config(work, work / "nowhere"), capsys, str(work / "nowhere"))


def test_no_usable_identities(work: Path, faces: Path, capsys) -> None:
    root = _copy(faces, work)
    for person in root.glob("id_*"):
        for image in sorted(person.iterdir())[1:]:
            image.unlink()  # one image per person: no genuine pairs, nothing to learn from
    _refused(work, _config(work, root), capsys, str(root))


def _truncate_one(root: Path) -> Path:
    victim = sorted(root.glob("*/*.jpg"))[5]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    return victim


def test_truncated_jpeg_fails_by_default(work: Path, faces: Path, capsys) -> None:
    victim = _truncate_one(_copy(faces, work))
    _refused(work, _config(work, work / "faces"), capsys, str(victim), "truncated")


def test_truncated_jpeg_skipped_and_counted_when_asked(work: Path, faces: Path, capsys) -> None:
    victim = _truncate_one(_copy(faces, work))
    assert _run(work, _config(work, work / "faces", data={"bad_images": "skip"})) == 0
    out = capsys.readouterr().out
    assert f"warning: skipped: cannot read image {victim}" in out
    listing = (work / "out" / "skipped_images.txt").read_text()
    assert str(victim) in listing and len(listing.splitlines()) == 1
    import mlflow

    runs = mlflow.search_runs(experiment_names=["hostile"], output_format="list")
    teacher = next(r for r in runs if r.data.tags.get("facekd.stage") == "teacher")
    assert teacher.data.metrics["data.skipped_images"] == 1.0


def _recordio(faces: Path, root: Path) -> Path:
    people = sorted(p for p in faces.iterdir() if p.is_dir())
    samples = [
        (image.read_bytes(), label)
        for label, person in enumerate(people)
        for image in sorted(person.glob("*.jpg"))
    ]
    return write_recordio(root, samples)


def test_truncated_recordio_and_index(work: Path, faces: Path, capsys) -> None:
    root = _recordio(faces, work / "rec")
    rec = (root / "train.rec").read_bytes()
    (root / "train.rec").write_bytes(rec[: len(rec) // 2])
    _refused(work, _config(work, root), capsys, "train.rec")
    (root / "train.rec").write_bytes(rec)
    idx = (root / "train.idx").read_text()
    (root / "train.idx").write_text(idx[: len(idx) // 2] + "\n17\t")
    _refused(work, _config(work, root), capsys, "train.idx")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_is_refused_and_never_runs(work: Path, faces: Path, capsys) -> None:
    marker = work / "pwned"
    evil = work / "lfw.bin"
    jpeg = next(faces.glob("*/*.jpg")).read_bytes()
    write_bin(evil, [(jpeg, jpeg)], [True])
    with open(evil, "wb") as f:
        pickle.dump(([jpeg, _Evil(marker)], [True]), f, protocol=4)
    _refused(work, _config(work, faces, data={"eval": str(evil)}), capsys, "lfw.bin", "refused")
    assert not marker.exists()


def test_checkpoint_of_another_architecture(work: Path, faces: Path, capsys) -> None:
    from teachers.registry import create_teacher

    ckpt = work / "vit.pt"
    torch.save(create_teacher("vit_face_micro", embedding_size=32).state_dict(), ckpt)
    config = _config(work, faces, teacher={"model": "mobilefacenet", "checkpoint": str(ckpt)})
    err = _refused(work, config, capsys, "vit.pt", "missing")
    assert "unexpected" in err


def test_file_that_is_not_a_checkpoint(work: Path, faces: Path, capsys) -> None:
    ckpt = work / "weights.pt"
    ckpt.write_bytes(b"<html>404 Not Found</html>")
    config = _config(work, faces, teacher={"model": "mobilefacenet", "checkpoint": str(ckpt)})
    _refused(work, config, capsys, "weights.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tracking_server_refusing_connections(work: Path, faces: Path, monkeypatch, capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    t0 = time.time()
    _refused(work, _config(work, faces), capsys, url, "not usable")
    assert time.time() - t0 < 60
    assert not (work / "out" / "teacher").exists(), "training started"


def test_tracking_server_that_never_answers(work: Path, faces: Path, monkeypatch, capsys):
    """A server that accepts connections and stays silent: a timeout, before training."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        t0 = time.time()
        _refused(work, _config(work, faces), capsys, url, "not usable")
        assert time.time() - t0 < 60
        assert not (work / "out" / "teacher").exists(), "training started"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
