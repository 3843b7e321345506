"""The data a pipeline run works on: training faces, evaluation people and their pairs.

``data.train`` is ``synthetic``, an ImageFolder or an InsightFace RecordIO folder (``train.rec``
and ``train.idx``); training images are read on demand (through the RecordIO index or the
folder listing, :mod:`faces.streaming`), or decoded into memory once when they fit in
``data.memory_budget_mb`` (``data.cache_in_memory``). ``data.eval`` is null (people held out
of ``train``), an ImageFolder (pairs drawn with the pipeline seed), an InsightFace ``.bin``,
an image folder with a pairs file (LFW ``pairs.txt`` or CSV/TSV), or a list of those
(``eval_sets``, see :mod:`pipelines.evaluation.sets`); files keep their pairs and order.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faces.chunks import ChunkSource, chunk_index, is_chunked
from faces.data import (
    FaceDataError,
    FaceIndex,
    decode_images,
    listing_fingerprint,
    load_image,
    make_pairs,
    merge_indices,
    scan_image_folder,
    split_identities,
)
from faces.evaluate import FarThreshold
from faces.pairs_file import is_generic_pairs_file
from faces.streaming import (
    ConcatSource,
    FilledSource,
    FolderSource,
    ImageSource,
    RecordIOSource,
    TensorSource,
    TrainingFaces,
)
from faces.transforms import IMAGE_SIZE, fill_black_border
from faces.verification_sets import SetSpec, VerificationSet, load_verification_sets
from pipelines.core.config import PipelineConfig, eval_specs, set_names
from pipelines.evaluation.sets import eval_fingerprint, eval_identities, far_threshold
from teachers.checkpoint import sha256_file


def image_files_under(folders: list[str]) -> list[Path]:
    """Every image file under ``folders`` (any depth), sorted."""
    from faces.data import IMAGE_SUFFIXES

    return sorted(
        p for f in folders for p in Path(f).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
    )


def _listing_digest(folder: str) -> str:
    """The names of the image files under ``folder`` (any depth), hashed."""
    h = hashlib.sha256()
    for p in image_files_under([folder]):
        h.update(f"{p}\n".encode())
    return h.hexdigest()


def chunked_fingerprint(root: str | Path) -> dict[str, str]:
    """Hashes of a chunked set's index, labels and people (its chunks are not read)."""
    from faces.chunks import LABELS, META

    return {name: sha256_file(Path(root) / name) for name in ("index.json", LABELS, META)}


def is_recordio(path: str | Path) -> bool:
    """Whether ``path`` is a RecordIO training folder (``train.rec`` and ``train.idx``)."""
    p = Path(path)
    return (p / "train.rec").is_file() and (p / "train.idx").is_file()


def recordio_fingerprint(root: str | Path) -> dict[str, Any]:
    """Size and mtime of ``train.rec`` (not read: it can be 100s of GB), hash of index/property."""
    root = Path(root)
    out: dict[str, Any] = {}
    for name in ("train.rec", "train.idx", "property"):
        p = root / name
        if p.is_file():
            st = p.stat()
            out[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            if name != "train.rec":
                out[name]["sha256"] = sha256_file(p)
    return out


def recordio_index(root: str | Path) -> FaceIndex:
    """A FaceIndex of a RecordIO set: identities are the class numbers, ``records`` positions."""
    from faces.recordio import RecordIOFaces

    ds = RecordIOFaces(root)
    classes, labels = np.unique(ds.labels, return_inverse=True)
    return FaceIndex(
        root=Path(root),
        paths=(),
        labels=labels.astype(np.int64).reshape(-1),
        identities=tuple(str(int(c)) for c in classes),
        records=np.arange(len(ds), dtype=np.int64),
    )


def _with_min_images(index: FaceIndex, min_images: int) -> FaceIndex:
    counts = np.bincount(index.labels, minlength=len(index.identities))
    keep = [name for name, n in zip(index.identities, counts, strict=True) if n >= min_images]
    if not keep:
        raise FaceDataError(f"{index.root} holds no identities with >= {min_images} images")
    return index if len(keep) == len(index.identities) else index.subset(keep)


class DataContext:
    """Resolves ``data:`` once per invocation; images are decoded lazily and kept."""

    def __init__(self, config: PipelineConfig, output_dir: Path) -> None:
        self.config = config
        self.cfg = config.data
        self.output_dir = output_dir
        self.skipped_images: list[str] = []  # unreadable images left out (bad_images: skip)

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
    def train_is_recordio(self) -> bool:
        return self.cfg.train != "synthetic" and is_recordio(self.cfg.train)

    @property
    def eval_specs(self) -> list[SetSpec]:
        """The separate evaluation sets (``data.eval``); empty when people are held out."""
        return [replace(s, path=str(self._root(s.path))) for s in eval_specs(self.cfg)]

    @property
    def separate_eval(self) -> bool:
        return bool(self.eval_specs)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data without decoding it: listings, file hashes, split settings.

        ImageFolders are identified by their listing (people and file names, from the manifest
        cache), so a file's content edited in place without a rename is not noticed (--force).
        """

        def train(value: str) -> Any:
            if value == "synthetic":
                return {"synthetic": self.cfg.synthetic.model_dump()}
            path = str(Path(value).resolve())
            if is_chunked(value):
                return {"path": path, "chunks": chunked_fingerprint(value)}
            if is_recordio(value):
                return {"path": path, "recordio": recordio_fingerprint(value)}
            return {"path": path, "listing": listing_fingerprint(value, manifest=self.cfg.manifest)}

        return {
            "train": train(self.cfg.train),
            **(
                {"extra_train": [train(v) for v in self.cfg.extra_train]}
                if self.cfg.extra_train
                else {}
            ),
            **eval_fingerprint(self.cfg),
            "eval_fraction": None if self.separate_eval else self.cfg.eval_fraction,
            "min_images": self.cfg.min_images_per_identity,
            "seed": self.config.pipeline.seed,
        }

    # -- identities -----------------------------------------------------------------------
    def _scan_train(self) -> FaceIndex:
        if self.cfg.train != "synthetic" and is_chunked(self.cfg.train):
            return _with_min_images(chunk_index(self.cfg.train), self.cfg.min_images_per_identity)
        if self.train_is_recordio:
            return _with_min_images(
                recordio_index(self.cfg.train), self.cfg.min_images_per_identity
            )
        main = scan_image_folder(
            self._root(self.cfg.train), self.cfg.min_images_per_identity, manifest=self.cfg.manifest
        )
        if not self.cfg.extra_train:
            return main
        extras = [
            scan_image_folder(f, self.cfg.min_images_per_identity, manifest=self.cfg.manifest)
            for f in self.cfg.extra_train
        ]
        return merge_indices([main, *extras])

    @cached_property
    def _indices(self) -> tuple[FaceIndex, FaceIndex | None]:
        train_all = self._scan_train()
        if self.separate_eval:
            folders = [s for s in self.eval_specs if Path(s.path).is_dir()]
            eval_index = None
            first = folders[0] if folders else None
            if first and not (first.pairs_file and is_generic_pairs_file(first.pairs_file)):
                min_images = 1 if first.pairs_file else 2
                eval_index = scan_image_folder(first.path, min_images, manifest=self.cfg.manifest)
            if not folders or self.train_is_recordio:  # no names to compare
                return train_all, eval_index
            people = set().union(*(eval_identities(s, self.cfg.manifest) or set() for s in folders))
            keep = [i for i in train_all.identities if i not in people]
            return train_all.subset(keep), eval_index
        train_ids, eval_ids = split_identities(
            train_all, self.cfg.eval_fraction, self.config.pipeline.seed
        )
        return train_all.subset(train_ids), train_all.subset(eval_ids)

    @property
    def train_index(self) -> FaceIndex:
        return self._indices[0]

    @property
    def eval_index(self) -> FaceIndex | None:
        """The evaluation people (held out, or the first eval folder); None for a ``.bin``."""
        return self._indices[1]

    @property
    def eval_names(self) -> list[str]:
        """Names of the evaluation sets (``verify.<name>.*``), known without loading them."""
        return set_names(self.cfg)

    @property
    def eval_name(self) -> str:
        """The first evaluation set's name (the only one unless ``data.eval`` is a list)."""
        return self.eval_names[0]

    @property
    def far_threshold(self) -> FarThreshold | None:
        """``data.threshold_from`` / ``threshold_far``: accuracy at a fixed threshold."""
        return far_threshold(self.cfg)

    # -- tensors --------------------------------------------------------------------------
    def _decode(self, index: FaceIndex) -> tuple[torch.Tensor, FaceIndex]:
        """Decode an index's images (ImageFolder paths or RecordIO records) into memory.

        Returns the images and the index of those kept (all, unless ``data.bad_images`` is
        ``skip`` and some could not be read).
        """
        policy = self.cfg.bad_images
        if index.records is None:
            images, kept, skipped = decode_images(
                lambda i: load_image(index.paths[i]), len(index), bad_images=policy
            )
            self._report_skipped(skipped)
            return images, index.take(kept)
        if is_chunked(index.root):
            chunks = ChunkSource(index.root, index.records)
            images, kept, skipped = decode_images(chunks.read, len(index), bad_images=policy)
            self._report_skipped(skipped)
            return images, index.take(kept)
        from faces.recordio import RecordIOFaces

        ds = RecordIOFaces(index.root)
        try:
            images, kept, skipped = decode_images(
                lambda i: ds[int(index.records[i])][0], len(index), ds.size, policy
            )
        finally:
            ds.close()
        self._report_skipped(skipped)
        return images, index.take(kept)

    def _report_skipped(self, skipped: list[str]) -> None:
        """Count and list unreadable images left out (``data.bad_images: skip``)."""
        if not skipped:
            return
        self.skipped_images.extend(skipped)
        for message in skipped[:5]:
            print(f"warning: skipped: {message}")
        if len(skipped) > 5:
            print(f"warning: ... and {len(skipped) - 5} more unreadable images skipped")
        listing = self.output_dir / "skipped_images.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{m}\n" for m in self.skipped_images))

    @property
    def augment_mode(self) -> str:
        """Where training images are augmented: ``sample`` (loader workers) or ``batch`` (the
        training step, on the GPU); ``data.augment_on: auto`` picks the GPU when there is one."""
        where = self.cfg.augment_on
        if self.cfg.loader == "dali":
            return "batch"  # DALI decodes and mirrors; the step augments the batch
        if where == "auto":
            where = "device" if torch.cuda.is_available() else "workers"
        return "batch" if where == "device" else "sample"

    def dali_faces(self, batch_size: int) -> Any:
        """The training images as NVIDIA DALI batches (``data.loader: dali``)."""
        from faces.cache import cache_dir
        from faces.dali_loader import DaliFaces
        from faces.recordio import RecordIOFaces

        if not self.train_is_recordio:
            raise FaceDataError(
                f"data.loader: dali reads InsightFace RecordIO sets (train.rec, train.idx); "
                f"data.train {self.cfg.train} is not one"
            )
        index = self.train_index
        reader = RecordIOFaces(index.root)
        records = np.asarray(index.records)
        threads = max(1, len(os.sched_getaffinity(0)) - 1)
        return DaliFaces(
            index.root,
            reader.keys[records],
            index.labels,
            reader.labels[records],
            batch_size,
            cache_dir() / "dali",
            self.config.pipeline.seed,
            threads=threads,
        )

    def fits_in_memory(self, count: int) -> bool:
        """Whether ``count`` training images are decoded into memory (``cache_in_memory``)."""
        if self.cfg.cache_in_memory == "auto":
            return count * 3 * IMAGE_SIZE * IMAGE_SIZE <= self.cfg.memory_budget_mb * 2**20
        return bool(self.cfg.cache_in_memory)

    @cached_property
    def train_source(self) -> tuple[ImageSource, FaceIndex]:
        """The labelled training images and their index: decoded into memory when they fit,
        else read on demand (RecordIO through its index, ImageFolder through its listing)."""
        index = self.train_index
        if self.fits_in_memory(len(index)):
            images, kept = self._decode(index)
            return TensorSource(images), kept
        if index.records is not None:
            if is_chunked(index.root):
                return ChunkSource(index.root, index.records), index
            return RecordIOSource(index.root, index.records), index
        return FolderSource(index.paths), index

    def unlabelled_source(self, folders: list[str]) -> ImageSource:
        """The images under ``folders`` (any depth), frames filled, in memory when they fit;
        made once per invocation (the training set and the target map share it)."""
        key = tuple(str(Path(f).resolve()) for f in folders)
        made = self.__dict__.setdefault("_unlabelled_sources", {})
        if key not in made:
            paths = image_files_under(folders)
            if self.fits_in_memory(len(paths)):
                made[key] = TensorSource(self.unlabelled_images(folders))
            else:
                made[key] = FilledSource(FolderSource(paths))
        return made[key]

    def training_faces(
        self, unlabelled: list[str] | None = None, augment: str = "sample"
    ) -> TrainingFaces:
        """The training set as samples ``(image, index, label, mirrored)`` (label -1:
        unlabelled faces of ``unlabelled`` folders, after the labelled ones)."""
        source, index = self.train_source
        labels = index.labels
        if unlabelled:
            extra = self.unlabelled_source(unlabelled)
            source = ConcatSource([source, extra])
            labels = np.concatenate([labels, np.full(len(extra), -1, dtype=np.int64)])
        return TrainingFaces(
            source, labels, self.config.pipeline.seed, augment, self.cfg.bad_images
        )

    def training_key(self, unlabelled: list[str] | None = None) -> str:
        """What identifies the training images in order (for the teacher's target map)."""
        fp = self.fingerprint()
        parts = {
            "train": fp["train"],
            "extra_train": fp.get("extra_train"),
            "min_images": fp["min_images"],
            "eval": fp["eval"] if not self.separate_eval else None,  # held-out split
            "seed": fp["seed"] if not self.separate_eval else None,
            "kept": len(self.train_source[1]),
            "skipped": self.skipped_images,
            "unlabelled": [
                {"path": str(Path(f).resolve()), "listing": _listing_digest(f)}
                for f in unlabelled or []
            ],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def calibration_faces(self, count: int = 100) -> np.ndarray:
        """``count`` training faces, evenly spaced, uint8 NHWC (int8 calibration)."""
        source, index = self.train_source
        rows = np.linspace(0, len(index) - 1, min(count, len(index))).astype(int)
        faces = torch.stack([source.read(int(i)) for i in rows])
        return np.ascontiguousarray(faces.numpy().transpose(0, 2, 3, 1))

    @cached_property
    def eval_sets(self) -> list[VerificationSet]:
        """Every evaluation set; loaded together, they share one images tensor (each image
        decoded once, embedded once per model)."""
        if self.separate_eval:
            return load_verification_sets(
                self.eval_specs,
                n_pairs=self.cfg.eval_pairs,
                seed=self.config.pipeline.seed,
                manifest=self.cfg.manifest,
            )
        images, index = self._heldout
        pairs = make_pairs(index.labels, self.cfg.eval_pairs, self.config.pipeline.seed)
        return [VerificationSet(self.eval_name, images, pairs)]

    def heldout_people(self) -> tuple[torch.Tensor, np.ndarray]:
        """The held-out evaluation people (``data.eval`` null): uint8 faces and labels."""
        images, index = self._heldout
        return images, index.labels

    @cached_property
    def _heldout(self) -> tuple[torch.Tensor, FaceIndex]:
        assert self.eval_index is not None
        return self._decode(self.eval_index)

    @property
    def eval_images(self) -> torch.Tensor:
        """The images of every evaluation set (one tensor that all their pairs index)."""
        return self.eval_sets[0].images

    @property
    def eval_pairs(self) -> np.ndarray:
        """The first evaluation set's pairs."""
        return self.eval_sets[0].pairs

    def unlabelled_images(self, folders: list[str]) -> torch.Tensor:
        """All images under the given folders (any depth), decoded once; no labels needed.

        Black alignment frames of tight crops (UTKFace) are filled from the nearest photo
        pixels (:func:`faces.transforms.fill_black_border`)."""
        key = tuple(str(Path(f).resolve()) for f in folders)
        cache = self.__dict__.setdefault("_unlabelled", {})
        if key not in cache:
            cache[key] = self._decode_unlabelled(folders)
        return cache[key]

    def _decode_unlabelled(self, folders: list[str]) -> torch.Tensor:
        paths = image_files_under(folders)
        images, _, skipped = decode_images(
            lambda i: load_image(paths[i]), len(paths), bad_images=self.cfg.bad_images
        )
        self._report_skipped(skipped)
        return fill_black_border(images)

    def probe_batch(self, n: int) -> torch.Tensor:
        """The first ``n`` evaluation images, normalised, for parity.

        Held-out people: one image per person first. Verification sets (no labels): the first
        image of every pair in file order first, then the second ones, set after set, then any
        others.
        """
        from faces.transforms import normalise

        if self.separate_eval:
            candidates = []
            for vset in self.eval_sets:
                candidates += [*vset.pairs[:, 0].tolist(), *vset.pairs[:, 1].tolist()]
            candidates += range(len(self.eval_images))
            order = list(dict.fromkeys(int(i) for i in candidates))[:n]
        else:
            labels = self._heldout[1].labels
            firsts = [int(np.flatnonzero(labels == k)[0]) for k in np.unique(labels)]
            first_set = set(firsts)
            rest = [i for i in range(len(labels)) if i not in first_set]
            order = (firsts + rest)[:n]
        return normalise(self.eval_images[torch.tensor(order)])
