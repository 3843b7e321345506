"""Loading model weights safely (``weights_only=True``) with clear errors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

WRAPPER_KEYS = ("net_state_dict", "state_dict", "model", "model_state_dict")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the architecture."""


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (plain, or wrapped as ``net_state_dict`` etc.).

    Loads with ``weights_only=True``: no code in the file runs. Strips ``module.`` prefixes.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"{path} is not a loadable PyTorch checkpoint: {exc}") from exc
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not any(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} holds no tensors: not a model checkpoint")
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in obj.items()
        if torch.is_tensor(v)
    }


def load_checkpoint_into(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    name: str | None = None,
) -> nn.Module:
    """Load weights into ``model``; on mismatch list missing/unexpected keys and shape errors."""
    if isinstance(source, Mapping):
        state = dict(source)
        name = name or "state dict"
    else:
        state = read_state_dict(source)
        name = name or str(source)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if shapes or (strict and (missing or unexpected)):
        parts = [f"{name} does not fit {type(model).__name__}"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes[:10])}")
        raise CheckpointError("; ".join(parts))
    model.load_state_dict(state, strict=strict)
    return model
