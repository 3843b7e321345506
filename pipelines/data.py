"""The data a pipeline run works on: training faces, evaluation people and their pairs."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faces.data import (
    FaceImages,
    FaceIndex,
    folder_fingerprint,
    load_images,
    make_pairs,
    scan_image_folder,
    split_identities,
)
from pipelines.config import PipelineConfig


class DataContext:
    """Resolves ``data:`` once per invocation; images are decoded lazily and kept."""

    def __init__(self, config: PipelineConfig, output_dir: Path) -> None:
        self.config = config
        self.cfg = config.data
        self.output_dir = output_dir

    # -- where the data lives -------------------------------------------------------------
    def _synthetic_root(self) -> Path:
        from faces.synthetic import write_synthetic_faces

        s = self.cfg.synthetic
        root = (
            self.output_dir / "data" / f"synthetic_{s.identities}x{s.images_per_identity}_s{s.seed}"
        )
        if not (root / "README.txt").exists():
            write_synthetic_faces(root, s.identities, s.images_per_identity, s.seed)
        return root

    def _root(self, value: str) -> Path:
        return self._synthetic_root() if value == "synthetic" else Path(value)

    @property
    def separate_eval(self) -> bool:
        return bool(self.cfg.eval) and self.cfg.eval != self.cfg.train

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data without reading it: folder listings and split settings."""

        def one(value: str | None) -> Any:
            if value is None:
                return None
            if value == "synthetic":
                return {"synthetic": self.cfg.synthetic.model_dump()}
            return {"path": str(Path(value).resolve()), "listing": folder_fingerprint(value)}

        return {
            "train": one(self.cfg.train),
            "eval": one(self.cfg.eval) if self.separate_eval else None,
            "eval_fraction": None if self.separate_eval else self.cfg.eval_fraction,
            "eval_pairs": self.cfg.eval_pairs,
            "min_images": self.cfg.min_images_per_identity,
            "seed": self.config.pipeline.seed,
        }

    # -- identities -----------------------------------------------------------------------
    @cached_property
    def _indices(self) -> tuple[FaceIndex, FaceIndex]:
        train_all = scan_image_folder(self._root(self.cfg.train), self.cfg.min_images_per_identity)
        if self.separate_eval:
            eval_index = scan_image_folder(self._root(self.cfg.eval), 2)
            overlap = set(train_all.identities) & set(eval_index.identities)
            keep = [i for i in train_all.identities if i not in overlap]
            return train_all.subset(keep), eval_index
        train_ids, eval_ids = split_identities(
            train_all, self.cfg.eval_fraction, self.config.pipeline.seed
        )
        return train_all.subset(train_ids), train_all.subset(eval_ids)

    @property
    def train_index(self) -> FaceIndex:
        return self._indices[0]

    @property
    def eval_index(self) -> FaceIndex:
        return self._indices[1]

    @property
    def eval_name(self) -> str:
        if self.cfg.eval_name:
            return self.cfg.eval_name
        if self.separate_eval:
            return Path(self.cfg.eval).resolve().name
        return (
            "synthetic"
            if self.cfg.train == "synthetic"
            else Path(self.cfg.train).resolve().name + "_heldout"
        )

    # -- tensors --------------------------------------------------------------------------
    @cached_property
    def train_dataset(self) -> FaceImages:
        return FaceImages(self.train_index)

    @cached_property
    def eval_images(self) -> torch.Tensor:
        return load_images(self.eval_index.paths)

    @cached_property
    def eval_pairs(self) -> np.ndarray:
        return make_pairs(self.eval_index.labels, self.cfg.eval_pairs, self.config.pipeline.seed)

    def unlabelled_images(self, folders: list[str]) -> torch.Tensor:
        """All images under the given folders (any depth), decoded; labels are not needed."""
        from faces.data import IMAGE_SUFFIXES

        paths = sorted(
            p for f in folders for p in Path(f).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        return load_images(paths)

    def probe_batch(self, n: int) -> torch.Tensor:
        """The first ``n`` evaluation images (one per person first), normalised, for parity."""
        from faces.transforms import normalise

        labels = self.eval_index.labels
        firsts = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)]
        rest = [i for i in range(len(labels)) if i not in set(firsts)]
        order = (firsts + rest)[:n]
        return normalise(self.eval_images[torch.tensor(order)])
