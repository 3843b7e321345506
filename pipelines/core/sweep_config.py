"""The ``sweep:`` section of a sweep file: what ``facekd sweep`` searches, for what, how long.

A sweep file is a pipeline file plus::

    sweep:
      study: bnn-front                # the Optuna study (default: the pipeline's name)
      space:                          # dotted pipeline keys
        distill.student: {choices: [birealface, quicknet_small]}
        distill.args.width: {int: [32, 96], step: 32, when: {distill.student: birealface}}
        distill.train.lr: {float: [1.0e-4, 1.0e-2], log: true}
      objectives:                     # logged metrics and their direction
        verify.mean.acc: maximize
        bench.latency_ms_p50: minimize
      budget: {trials: 12, minutes_per_trial: 20, minutes: 120}
      pruner: {name: median, startup_trials: 2}   # median | successive_halving | hyperband | none
      report_every_steps: 50          # the distillation's intermediate evaluation, for pruning

Everything is checked before the first trial; an error names the key.
"""

from __future__ import annotations

import copy
import fnmatch
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.core.config import ConfigError, PipelineConfig, set_key, validate_raw

# the metrics each stage logs (record metrics; fnmatch patterns): an objective must match one
# of the sweep's stages
STAGE_METRICS: dict[str, tuple[str, ...]] = {
    "teacher": ("verify.*", "teacher.*"),
    "twin": ("verify.*", "train.*", "model.params"),
    "distill": (
        "verify.*",
        "twin.verify.*",
        "distill.binarization_cost*",
        "train.*",
        "model.params",
    ),
    "export": ("export.*", "model.*"),
    "evaluate": ("verify.*", "bench.*", "model.*", "reference.*"),
    "privacy": ("privacy.*",),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SpaceParam(_Strict):
    """One searched key: ``choices``, an ``int`` range or a ``float`` range."""

    choices: list[Any] | None = None
    int_range: tuple[int, int] | None = Field(None, alias="int")
    float_range: tuple[float, float] | None = Field(None, alias="float")
    step: int | float | None = Field(None, gt=0)
    log: bool = False
    # the key applies only where these keys (sampled earlier, or the pipeline's) have these
    # values (one value or a list of them)
    when: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_kind(self) -> SpaceParam:
        kinds = [k for k in ("choices", "int_range", "float_range") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of choices, int, float (got {len(kinds)})")
        if self.choices is not None and not self.choices:
            raise ValueError("choices: empty")
        for kind in ("int", "float"):
            rng = getattr(self, f"{kind}_range")
            if rng is not None:
                low, high = rng
                if not low < high:
                    raise ValueError(f"{kind}: empty range [{low}, {high}]")
                if self.log and low <= 0:
                    raise ValueError(f"{kind}: log scale needs a positive low end, got {low}")
        if self.log and self.step is not None:
            raise ValueError("step and log: choose one (Optuna samples either)")
        return self

    def values_to_check(self) -> list[Any]:
        """Values that validate the key against the pipeline schema: every choice, both ends."""
        if self.choices is not None:
            return list(self.choices)
        return list(self.int_range if self.int_range is not None else self.float_range)


class Budget(_Strict):
    trials: int = Field(8, ge=1)  # finished trials of the study (every worker together)
    minutes_per_trial: float | None = Field(None, gt=0)  # distill.train.max_minutes of each
    minutes: float | None = Field(None, gt=0)  # wall clock of this worker


class PrunerConfig(_Strict):
    name: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    startup_trials: int = Field(2, ge=0)  # trials that run to the end before any is pruned
    warmup_steps: int = Field(0, ge=0)  # reports before this step never prune


class SweepSection(_Strict):
    study: str | None = None
    space: dict[str, SpaceParam]
    objectives: dict[str, Literal["maximize", "minimize"]]
    budget: Budget = Budget()
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    pruner: PrunerConfig = PrunerConfig()
    report_every_steps: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _not_empty(self) -> SweepSection:
        if not self.space:
            raise ValueError("space: no key to search")
        if not self.objectives:
            raise ValueError("objectives: no metric to optimise")
        return self


class Sweep:
    """A validated sweep: the base pipeline (raw, to apply sampled keys to), its section."""

    def __init__(self, path: Path, raw: dict[str, Any], section: SweepSection) -> None:
        self.path, self.raw, self.section = path, raw, section
        self.base = validate_raw(copy.deepcopy(raw), path)
        self.study = section.study or self.base.pipeline.name

    def trial_config(self, params: dict[str, Any], where: str) -> PipelineConfig:
        """The pipeline of one trial: the base with the sampled keys set."""
        raw = copy.deepcopy(self.raw)
        for key, value in params.items():
            set_key(raw, key, copy.deepcopy(value), f"{self.path}: sweep.space.{key}")
        return validate_raw(raw, f"{self.path} ({where})")


def objective_stage(metric: str, stages: list[str]) -> str | None:
    """The last of ``stages`` that logs ``metric`` (its value wins), or None."""
    owner = None
    for stage in stages:
        if any(fnmatch.fnmatchcase(metric, p) for p in STAGE_METRICS.get(stage, ())):
            owner = stage
    return owner


def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None) -> Sweep:
    """Read and check a sweep file: the pipeline, every space key and value, the objectives."""
    from pipelines.core.config import apply_override

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sweep"), dict):
        raise ConfigError(f"{path}: no sweep: section (space, objectives, budget)")
    section_raw = raw.pop("sweep")
    try:
        section = SweepSection.model_validate(section_raw)
    except ValidationError as err:
        lines = [f"{path}: invalid sweep section"]
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            lines.append(f"  sweep.{loc}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None
    for assignment in overrides or []:
        apply_override(raw, assignment)
    sweep = Sweep(path, raw, section)
    for key, param in section.space.items():
        for value in param.values_to_check():
            sweep.trial_config({key: value}, f"sweep.space.{key} = {value!r}")
        for cond_key, cond_value in param.when.items():
            _check_condition(sweep, key, cond_key, cond_value)
    stages = sweep.base.stages
    for metric in section.objectives:
        if objective_stage(metric, stages) is None:
            raise ConfigError(
                f"{path}: sweep.objectives.{metric}: no stage of this pipeline "
                f"({', '.join(stages)}) logs it (e.g. verify.<set>.acc, verify.mean.acc, "
                "bench.latency_ms_p50, model.size_bytes, distill.binarization_cost, privacy.*)"
            )
    check_pruning(sweep)
    return sweep


def check_pruning(sweep: Sweep) -> str | None:
    """The metric reported for pruning (an accuracy objective the distill stage evaluates
    during training), or None when the sweep does not prune."""
    s = sweep.section
    if s.pruner.name == "none":
        return None
    metric = next((m for m in s.objectives if m.startswith("verify.") and m.endswith(".acc")), None)
    if metric is None:
        raise ConfigError(
            f"{sweep.path}: sweep.pruner.{s.pruner.name}: pruning needs an objective "
            "verify.<set>.acc (the distillation's intermediate evaluation); or pruner: none"
        )
    if len(s.objectives) > 1 and s.pruner.name != "median":
        raise ConfigError(
            f"{sweep.path}: sweep.pruner.{s.pruner.name}: with several objectives only the "
            "median rule prunes (Optuna prunes single-objective studies)"
        )
    if "distill" not in sweep.base.stages:
        raise ConfigError(f"{sweep.path}: sweep.pruner: the pipeline has no distill stage")
    return metric


def _check_condition(sweep: Sweep, key: str, cond_key: str, cond_value: Any) -> None:
    """A ``when`` names a key that is searched (with those choices) or set in the pipeline."""
    space = sweep.section.space
    wanted = cond_value if isinstance(cond_value, list) else [cond_value]
    where = f"{sweep.path}: sweep.space.{key}.when.{cond_key}"
    if cond_key in space:
        choices = space[cond_key].choices
        if choices is None:
            raise ConfigError(f"{where}: conditions need a key with choices, not a range")
        unknown = [v for v in wanted if v not in choices]
        if unknown:
            raise ConfigError(f"{where}: {unknown} not among its choices {choices}")
        if list(space).index(cond_key) > list(space).index(key):
            raise ConfigError(f"{where}: {cond_key} must come before {key} in space")
        return
    if lookup(sweep.base.model_dump(), cond_key) is _MISSING:
        raise ConfigError(f"{where}: {cond_key} is neither searched nor a pipeline key")


_MISSING = object()


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` of a nested mapping, or ``_MISSING``."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def condition_holds(param: SpaceParam, sampled: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether ``param`` applies given the keys sampled so far and the base pipeline."""
    for key, value in param.when.items():
        wanted = value if isinstance(value, list) else [value]
        have = sampled[key] if key in sampled else lookup(base, key)
        if have not in wanted:
            return False
    return True
