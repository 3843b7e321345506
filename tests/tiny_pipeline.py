"""The tiny pipeline most end-to-end tests run: synthetic faces, a micro ViT teacher, a 1-bit
BiRealFace, a few timing runs. One definition here; each test changes what it needs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TINY: dict[str, Any] = {
    "pipeline": {"name": "tiny", "experiment": "facekd-test", "seed": 0},
    "stages": ["teacher", "distill", "export", "evaluate"],
    "data": {
        "train": "synthetic",
        "eval_pairs": 40,
        "eval_fraction": 0.3,
        "synthetic": {"identities": 8, "images_per_identity": 6, "seed": 0},
    },
    "teacher": {
        "model": "vit_face_micro",
        "args": {"embedding_size": 32},
        "train": {"epochs": 1, "batch_size": 16, "head": {"name": "arcface", "s": 16.0}},
    },
    "distill": {
        "student": "birealface",
        "args": {"width": 32, "depths": [1]},
        "train": {"epochs": 1, "batch_size": 16},
    },
    "export": {"probe_images": 4},
    "evaluate": {"runs": 3, "warmup": 1},
}


def tiny_pipeline(**changes: Any) -> dict[str, Any]:
    """A fresh copy of :data:`TINY` with dotted keys replaced (``distill__args`` style is not
    needed: pass ``{"distill.args": {...}}`` as ``**{"distill.args": ...}``); a value of None
    removes the key."""
    config = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return config


def write_pipeline(folder: Path, config: dict[str, Any], name: str = "tiny.yaml") -> Path:
    """Write ``config`` as ``folder/name`` and return its path."""
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(config))
    return path
