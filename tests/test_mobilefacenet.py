"""Tests for the MobileFaceNet teacher (architecture, checkpoint loading, real faces)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from teachers.mobilefacenet import (
    MobileFaceNet,
    build_pretrained_mobilefacenet,
    load_mobilefacenet_checkpoint,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CKPT = SHARED / "weights" / "mobilefacenet_casia_068.ckpt"
GLINT24 = SHARED / "faces" / "glint24"


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_forward_shape_and_state_dict_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MobileFaceNet().eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 128)
    assert torch.isfinite(out).all()
    # 112x112 input is centre-cropped to columns 8:104; 112x96 input passes through unchanged.
    assert torch.equal(model.crop_input(x), x[:, :, :, 8:104])
    x96 = torch.randn(2, 3, 112, 96)
    assert model.crop_input(x96) is x96

    path = tmp_path / "mfn.pt"
    torch.save(model.state_dict(), path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    fresh = MobileFaceNet()
    fresh.load_state_dict(state, strict=True)
    _assert_same_state(fresh.state_dict(), model.state_dict())

    # The wrapped / DataParallel form also loads through the helper, in eval mode.
    wrapped = tmp_path / "wrapped.ckpt"
    torch.save(
        {"epoch": 1, "net_state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped
    )
    loaded = build_pretrained_mobilefacenet(wrapped)
    assert not loaded.training
    _assert_same_state(loaded.state_dict(), model.state_dict())


@pytest.mark.parametrize(
    "content",
    [bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), b"just text\n"],
    ids=["random_bytes", "text_file"],
)
def test_garbage_file_raises_value_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="garbage.ckpt"):
        load_mobilefacenet_checkpoint(path)
    with pytest.raises(ValueError, match="garbage.ckpt"):
        build_pretrained_mobilefacenet(path)


def test_checkpoint_without_tensors_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.ckpt"
    torch.save({"epoch": 3, "net_state_dict": {}}, path)
    with pytest.raises(ValueError, match="empty.ckpt"):
        load_mobilefacenet_checkpoint(path)


def test_missing_key_raises_value_error_listing_it(tmp_path: Path) -> None:
    state = MobileFaceNet().state_dict()
    del state["linear7.bn.running_var"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.ckpt"
    torch.save({"epoch": 1, "net_state_dict": state}, path)
    with pytest.raises(ValueError, match="partial.ckpt") as info:
        build_pretrained_mobilefacenet(path)
    assert "linear7.bn.running_var" in str(info.value)
    assert "extra.weight" in str(info.value)


def _load_faces(files: list[Path]) -> torch.Tensor:
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files])
    return torch.from_numpy((arr - 127.5) / 128.0).permute(0, 3, 1, 2).contiguous()


@pytest.mark.shared
@pytest.mark.skipif(not CKPT.exists() or not GLINT24.is_dir(), reason="../shared is absent")
def test_pretrained_separates_real_faces() -> None:
    model = build_pretrained_mobilefacenet(CKPT)
    people = sorted(p for p in GLINT24.iterdir() if p.is_dir())[:10]
    per_person = 4
    files: list[Path] = []
    labels: list[int] = []
    for i, person in enumerate(people):
        imgs = sorted(person.glob("*.jpg"))[:per_person]
        files += imgs
        labels += [i] * len(imgs)
    assert len(set(labels)) == 10

    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(_load_faces(files)), dim=1)
    sim = emb @ emb.T
    lab = torch.tensor(labels)
    same = lab[:, None] == lab[None, :]
    off_diag = ~torch.eye(len(labels), dtype=torch.bool)
    genuine = sim[same & off_diag].mean().item()
    impostor = sim[~same].mean().item()
    assert genuine - impostor > 0.3, (genuine, impostor)
