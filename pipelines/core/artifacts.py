"""Model artifacts passed between stages, content hashes and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from students.registry import create_student
from teachers.checkpoint import load_checkpoint_into, sha256_file
from teachers.registry import create_teacher

FORMAT = "facekd.model/1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def save_model(
    path: Path,
    kind: str,
    arch: str,
    args: dict[str, Any],
    model: nn.Module | None,
    checkpoint: str | None = None,
) -> Path:
    """Write a model artifact: weights inline, or a reference to a pretrained checkpoint."""
    payload: dict[str, Any] = {"format": FORMAT, "kind": kind, "arch": arch, "args": dict(args)}
    if checkpoint is not None:
        payload["checkpoint"] = str(Path(checkpoint).resolve())
        payload["sha256"] = sha256_file(checkpoint)
    else:
        assert model is not None
        payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_model(path: str | os.PathLike, **override: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model artifact (``weights_only`` load); returns (model in eval mode, metadata)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path} is not a facekd model artifact: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a facekd model artifact (format {FORMAT})")
    args = {**payload["args"], **override}
    factory = create_teacher if payload["kind"] == "teacher" else create_student
    model = factory(payload["arch"], **args)
    if "checkpoint" in payload:
        ckpt = payload["checkpoint"]
        if not Path(ckpt).is_file():
            raise ValueError(f"{path} refers to checkpoint {ckpt}, which no longer exists")
        if sha256_file(ckpt) != payload["sha256"]:
            raise ValueError(f"{path} refers to checkpoint {ckpt}, whose content has changed")
        load_checkpoint_into(model, ckpt)
    else:
        load_checkpoint_into(model, payload["state_dict"], name=str(path), strict=not override)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.eval(), meta


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (names and contents)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()
