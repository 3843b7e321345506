"""``facekd ablate``: one pipeline file, several variants, sibling MLflow runs to compare.

An ablation file is a pipeline file with a ``variants:`` mapping. Each variant is a set of
keys (dotted paths, as with ``--set``) whose values replace the base's::

    variants:
      none:   {distill.losses: {arcface: {weight: 1.0, s: 64, m: 0.5}}}
      cosine: {distill.losses: {cosine: 1.0}}

Every variant runs as its own pipeline ``<name>-<variant>`` in ``<output_dir>/<variant>``
(one MLflow parent run each, tagged ``facekd.ablation`` and ``facekd.ablation.variant``,
siblings in the file's experiment: ``facekd compare --experiment ...`` lists them). Variants
with the base's teacher and data share one teacher stage (``<output_dir>/teacher``), the
decoded images and the cached teacher embeddings. ``--set`` overrides apply to every
variant, after the variant's own keys.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.config import ConfigError, PipelineConfig, apply_override, set_key, validate_raw


@dataclass
class Variant:
    name: str
    config: PipelineConfig
    shares_teacher: bool


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"ablation file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    variants = raw.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: variants: expected a mapping of variant names to settings")
    for name, keys in variants.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{path}: variants: {name!r} is not a plain name (a-z, 0-9, _, -)")
        if not isinstance(keys, dict):
            raise ConfigError(f"{path}: variants.{name}: expected a mapping of KEY.PATH: VALUE")
    return raw


def _teacher_key(config: PipelineConfig) -> str:
    """What determines the teacher stage's result (its settings, data and seed)."""
    return json.dumps(
        [config.teacher.model_dump(), config.data.model_dump(), config.pipeline.seed],
        sort_keys=True,
        default=str,
    )


def expand_ablation(
    path: str | os.PathLike, overrides: list[str] | None = None, only: list[str] | None = None
) -> list[Variant]:
    """The validated pipeline of every variant (all of them, or those named in ``only``)."""
    path = Path(path)
    raw = _read(path)
    variants: dict[str, dict[str, Any]] = raw.pop("variants")
    unknown = [v for v in only or [] if v not in variants]
    if unknown:
        raise ConfigError(
            f"{path}: no variant {', '.join(unknown)} (variants: {', '.join(variants)})"
        )
    base = copy.deepcopy(raw)
    for assignment in overrides or []:
        apply_override(base, assignment)
    base_config = validate_raw(copy.deepcopy(base), path)
    name = base_config.pipeline.name
    out = base_config.output_dir()
    result = []
    for variant, keys in variants.items():
        if only and variant not in only:
            continue
        v = copy.deepcopy(raw)
        for key, value in keys.items():
            set_key(v, str(key), copy.deepcopy(value), f"{path}: variants.{variant}.{key}")
        for assignment in overrides or []:
            apply_override(v, assignment)
        info = v.setdefault("pipeline", {})
        info["name"] = f"{name}-{variant}"
        info["output_dir"] = str(out / variant)
        info["tags"] = {
            **info.get("tags", {}),
            "facekd.ablation": name,
            "facekd.ablation.variant": variant,
        }
        config = validate_raw(v, f"{path} (variant {variant})")
        shares = "teacher" in config.stages and _teacher_key(config) == _teacher_key(base_config)
        result.append(Variant(variant, config, shares))
    return result


def _link_stage(variant_dir: Path, stage: str, shared: Path, log: Any) -> None:
    """``<variant>/<stage>`` -> a stage folder shared by variants (a relative symlink)."""
    variant_dir.mkdir(parents=True, exist_ok=True)
    shared.mkdir(parents=True, exist_ok=True)
    link = variant_dir / stage
    if link.is_symlink():
        if link.resolve() == shared.resolve():
            return
        link.unlink()
    elif link.exists():
        log(f"note: {link} is a folder of its own, not shared with the other variants")
        return
    link.symlink_to(os.path.relpath(shared, variant_dir), target_is_directory=True)


def _twin_key(config: PipelineConfig) -> str:
    """What makes two variants' float twins the same: their settings, data, seed, teacher."""
    from pipelines.orchestration.stages import TwinStage

    key = [
        TwinStage().settings(config),
        config.data.model_dump(),
        config.pipeline.seed,
        _teacher_key(config),
    ]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_variants(
    variants: list[Variant],
    base_out: Path,
    force: bool = False,
    log: Any = print,
    lock_twins: bool = False,
) -> list[tuple[Variant, dict[str, dict[str, Any]], str]]:
    """Run each variant's pipeline in turn (teacher, twins and decoded data shared under
    ``base_out``); returns each variant with its stage records and its main evaluation set.

    ``lock_twins``: processes running at the same time (sweep workers) train a shared twin
    once: its stage runs first under a lock on its folder, the others wait and reuse it."""
    import fcntl

    from pipelines.orchestration.orchestrator import Orchestrator

    shared_data: dict[str, Any] = {}
    done = []
    for v in variants:
        log(f"=== variant {v.name} ({v.config.pipeline.name}) ===")
        out = v.config.output_dir()
        if v.shares_teacher:
            _link_stage(out, "teacher", base_out / "teacher", log)
        twin = base_out / f"twin-{_twin_key(v.config)}"
        if "twin" in v.config.stages:  # variants that start from the same twin train it once
            _link_stage(out, "twin", twin, log)
        orch = Orchestrator(v.config, log=log)
        data_key = json.dumps(
            [v.config.data.model_dump(), v.config.pipeline.seed], sort_keys=True, default=str
        )
        orch.data = shared_data.setdefault(data_key, orch.data)  # decoded once
        if lock_twins and "twin" in v.config.stages and not force:
            with open(twin.parent / f".{twin.name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed or the process dies
                first = v.config.model_copy(deep=True)  # the stages up to the twin
                first.stages = v.config.stages[: v.config.stages.index("twin") + 1]
                pre = Orchestrator(first, log=log)
                pre.data = orch.data
                pre.run()  # trained here, or found up to date
        stages = v.config.stages
        after_teacher = [s for s in stages if s != "teacher"]
        if force and "teacher" in stages and after_teacher and orch.read_record("teacher"):
            records = orch.run(start=after_teacher[0], force=True)  # the teacher is kept
        else:
            records = orch.run(force=force)
        names = orch.data.eval_names
        done.append((v, records, names[0] if len(names) == 1 else "mean"))
    return done


def run_ablation(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    force: bool = False,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Run every variant; returns one result row per variant (also written as JSON/Markdown)."""
    from pipelines.core import logs

    variants = expand_ablation(path, overrides, only)
    base_out = variants[0].config.output_dir().parent
    logs.to_folder(base_out)  # the variants' library logs: <base>/facekd.log
    rows = [
        result_row(v, records, eval_name)
        for v, records, eval_name in run_variants(variants, base_out, force, log)
    ]
    # variants run by earlier invocations (``--variants``) keep their rows, in file order
    summary = base_out / "ablation.json"
    earlier = json.loads(summary.read_text()) if summary.is_file() else []
    ran = {r["variant"] for r in rows}
    order = list(_read(Path(path))["variants"])
    merged = [r for r in earlier if r.get("variant") not in ran and r.get("variant") in order]
    merged += rows
    merged.sort(key=lambda r: order.index(r["variant"]))
    table = ablation_table(merged)
    log("")
    log(table)
    base_out.mkdir(parents=True, exist_ok=True)
    (base_out / "ablation.md").write_text(table + "\n")
    summary.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return rows


def result_row(v: Variant, records: dict[str, dict[str, Any]], eval_name: str) -> dict[str, Any]:
    """What one variant gave: method, accuracy of the exported (or PyTorch) student, budget."""
    from distill.losses import method_name

    d = records.get("distill", {}).get("metrics", {})
    e = records.get("evaluate", {}).get("metrics", {})
    key = f"verify.{eval_name}"
    return {
        "variant": v.name,
        "pipeline": v.config.pipeline.name,
        "method": method_name(v.config.distill.losses, bool(v.config.distill.unlabelled)),
        "losses": v.config.distill.losses,
        "eval_set": eval_name,
        "acc": e.get(f"{key}.acc"),
        "acc_std": e.get(f"{key}.acc_std"),
        "pytorch_acc": d.get(f"{key}.acc"),
        "pytorch_acc_std": d.get(f"{key}.acc_std"),
        "twin_acc": d.get(f"twin.{key}.acc"),
        "twin_acc_std": d.get(f"twin.{key}.acc_std"),
        "binarization_cost": d.get("distill.binarization_cost"),
        "train_images": d.get("train.images"),
        "images_seen": d.get("train.images_seen"),
        "steps": d.get("train.steps"),
        "distill_minutes": d["time.distill_s"] / 60 if "time.distill_s" in d else None,
        "mlflow_run_id": records.get("distill", {}).get("mlflow_parent_run_id"),
    }


def _pm(acc: float | None, std: float | None) -> str:
    return "-" if acc is None else f"{acc:.4f} ± {std or 0:.4f}"


def ablation_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the variants, as in docs/methods.md."""
    eval_set = next((r["eval_set"] for r in rows if r.get("eval_set")), "?")
    twins = any(r.get("twin_acc") is not None for r in rows)  # distill.control: twin
    twin_head = " float twin acc (PyTorch) | binarization cost (pt) |" if twins else ""
    lines = [
        f"| variant | method | {eval_set} acc (LCE, 10-fold) | PyTorch acc |{twin_head} "
        "images seen | training images | distill min |",
        "|---|---|---|---|---|---|---|" + ("---|---|" if twins else ""),
    ]
    for r in rows:
        seen = "-" if r["images_seen"] is None else f"{r['images_seen']:,.0f}"
        n = "-" if r["train_images"] is None else f"{r['train_images']:,.0f}"
        minutes = "-" if r["distill_minutes"] is None else f"{r['distill_minutes']:.1f}"
        twin = ""
        if twins:
            cost = r.get("binarization_cost")
            cost_text = "-" if cost is None else f"{100 * cost:+.1f}"
            twin = f" {_pm(r.get('twin_acc'), r.get('twin_acc_std'))} | {cost_text} |"
        lines.append(
            f"| {r['variant']} | {r['method']} | {_pm(r['acc'], r['acc_std'])} | "
            f"{_pm(r['pytorch_acc'], r['pytorch_acc_std'])} |{twin} {seen} | {n} | {minutes} |"
        )
    return "\n".join(lines)
