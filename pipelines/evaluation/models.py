"""What ``facekd eval`` measures: a model (and a reference) on verification sets.

Models are loaded as embedders by ``export.embedders``; the sets by
``faces.verification_sets``; the table is ``pipelines.evaluation.report``.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from export.embedders import ArtifactFormat, LoadedModel
from faces.data import FaceDataError
from faces.evaluate import FarThreshold
from faces.verification_sets import SetSpec, VerificationSet
from pipelines.core.artifacts import FORMAT, load_model
from teachers.checkpoint import CheckpointError

__all__ = ["FACEKD_ARTIFACTS", "compare", "eval_report", "parse_data_args"]


FACEKD_ARTIFACTS = ArtifactFormat(FORMAT, load_model)
"""facekd's model artifacts (``pipelines.core.artifacts``), for ``load_embedder``."""

NOISE_RELATIVE = 1e-6
"""Relative input perturbation of ``--noise-draws``: float32 rounding's order of magnitude."""


def _split(values: np.ndarray, sets: list[VerificationSet]) -> dict[str, np.ndarray]:
    """Per-set slices of values computed over all sets' pairs concatenated."""
    out, start = {}, 0
    for s in sets:
        out[s.name] = values[start : start + len(s.pairs)]
        start += len(s.pairs)
    return out


def _set_metrics(
    scores: dict[str, np.ndarray], sets: list[VerificationSet], threshold: FarThreshold | None
) -> dict[str, float]:
    from faces.evaluate import sets_metrics

    try:
        return sets_metrics(scores, sets, threshold)
    except ValueError as exc:
        raise FaceDataError(f"cannot run the verification protocol: {exc}") from exc


def compare(
    model: LoadedModel,
    reference: LoadedModel | None,
    sets: list[VerificationSet],
    noise_draws: int = 0,
    batch_size: int = 64,
    threshold: FarThreshold | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of ``model`` on every set (``verify.<set>.*``, ``verify.mean.acc``); each image
    the sets use is embedded once per model. With a ``reference``, its accuracy and the delta
    (pt) per set and the per-image embedding cosines between the two; with ``noise_draws``,
    the accuracy deltas (pt) of the reference (else of ``model``) on inputs perturbed by 1e-6
    relative noise.

    Returns (metrics, details): metrics are floats for tracking; details hold the lists (noise
    deltas per draw, of the mean accuracy) and what was compared.
    """
    from faces.evaluate import pair_embeddings, perturbed_embed_fn, scores_of

    images = sets[0].images
    if any(s.images is not images for s in sets):
        raise ValueError("compare needs sets loaded together (one shared images tensor)")
    every = np.concatenate([s.pairs for s in sets])
    emb, where = pair_embeddings(model.embed, images, every, batch_size)
    metrics = _set_metrics(_split(scores_of(emb, where), sets), sets, threshold)
    details: dict[str, Any] = {}
    names = [s.name for s in sets] + (["mean"] if len(sets) > 1 else [])
    base, base_metrics = model, metrics
    if reference is not None:
        ref_emb, _ = pair_embeddings(reference.embed, images, every, batch_size)
        if ref_emb.shape != emb.shape:
            raise CheckpointError(
                f"the reference's embeddings are {ref_emb.shape[1] // 2}-d, the model's "
                f"{emb.shape[1] // 2}-d: they cannot be compared"
            )
        ref_metrics = _set_metrics(_split(scores_of(ref_emb, where), sets), sets, None)
        for name in names:
            key = f"verify.{name}"
            metrics[f"{key}.acc_reference"] = ref_metrics[f"{key}.acc"]
            metrics[f"{key}.acc_delta_pt"] = 100 * (
                metrics[f"{key}.acc"] - ref_metrics[f"{key}.acc"]
            )
        cosines = (emb.astype(np.float64) * ref_emb).sum(1)  # rows are L2-normalised
        metrics["parity.cosine_min"] = float(cosines.min())
        metrics["parity.cosine_median"] = float(np.median(cosines))
        metrics["parity.share_cosine_099"] = float((cosines >= 0.99).mean())
        base, base_metrics = reference, ref_metrics
    if noise_draws:
        deltas: dict[str, list[float]] = {name: [] for name in names}
        for k in range(noise_draws):
            noisy = perturbed_embed_fn(base.embed, NOISE_RELATIVE, seed=k)
            noisy_emb = pair_embeddings(noisy, images, every, batch_size)[0]
            noisy_metrics = _set_metrics(_split(scores_of(noisy_emb, where), sets), sets, None)
            for name in names:
                key = f"verify.{name}.acc"
                deltas[name].append(100 * (noisy_metrics[key] - base_metrics[key]))
        for name in names:
            metrics[f"verify.{name}.noise_delta_pt_max"] = float(np.max(np.abs(deltas[name])))
        details["noise_of"] = "reference" if reference is not None else "model"
        details["noise_deltas_pt"] = deltas[names[-1]]
    return metrics, details


def parse_data_args(
    data: list[str], pairs: list[str] | None, names: list[str] | None
) -> list[SetSpec]:
    """``--data PATH[,pairs=FILE][,name=NAME]`` (repeatable) into set specs; ``--pairs`` and
    ``--name`` go with a single ``--data``."""
    specs = []
    for value in data:
        path, options = value, {}
        if not Path(value).exists() and "," in value:
            path, *parts = value.split(",")
            for part in parts:
                key, eq, val = part.partition("=")
                if not eq or key not in ("pairs", "name") or not val:
                    raise FaceDataError(
                        f"--data {value}: expected PATH[,pairs=FILE][,name=NAME], got {part!r}"
                    )
                options[key] = val
        specs.append(SetSpec(path, options.get("name"), options.get("pairs")))
    for flag, given, field in (("--pairs", pairs, "pairs_file"), ("--name", names, "name")):
        if not given:
            continue
        if len(given) > 1 or len(specs) > 1:
            raise FaceDataError(
                f"{flag} goes with a single --data; with several, write "
                f"--data PATH,{'pairs' if field == 'pairs_file' else 'name'}=VALUE"
            )
        specs[0] = replace(specs[0], **{field: given[0]})
    return specs


def _set_report(spec: SetSpec, vset: VerificationSet) -> dict[str, Any]:
    used = np.unique(vset.pairs[:, :2])
    return {
        "set": vset.name,
        "data": spec.path,
        "pairs_file": spec.pairs_file,
        "n_images": int(len(used)),
        "n_pairs": int(len(vset.pairs)),
        "n_genuine": int(vset.pairs[:, 2].sum()),
        "own_folds": vset.folds is not None,
    }


def eval_report(
    model_path: str | os.PathLike,
    model: LoadedModel,
    reference_path: str | os.PathLike | None,
    reference: LoadedModel | None,
    specs: list[SetSpec],
    sets: list[VerificationSet],
    metrics: dict[str, float],
    details: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """The report of ``facekd eval`` (``compare``'s metrics and details, the sets, the models);
    ``started`` is the ``time.perf_counter()`` of the command's start. ``--json`` prints it,
    ``pipelines.evaluation.report.format_table`` makes the table."""
    set_reports = [_set_report(spec, s) for spec, s in zip(specs, sets, strict=True)]
    one = len(sets) == 1
    report = {
        "model": str(model_path),
        "model_format": model.format,
        "model_detail": model.detail,
        "data": specs[0].path if one else [spec.path for spec in specs],
        "set": sets[0].name if one else ",".join(s.name for s in sets),
        "n_images": int(len(np.unique(np.concatenate([s.pairs[:, :2] for s in sets])))),
        "n_pairs": sum(r["n_pairs"] for r in set_reports),
        "n_genuine": sum(r["n_genuine"] for r in set_reports),
        "sets": set_reports,
        "metrics": metrics,
        **details,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if reference is not None:
        report["reference"] = {
            "model": str(reference_path),
            "model_format": reference.format,
            "model_detail": reference.detail,
        }
    return report
