"""``facekd sweep``: an Optuna study over pipeline keys, one pipeline run per trial.

The study lives in Optuna's RDB storage: ``<output_dir>/optuna.db`` (SQLite) by default, or a
database server (``--storage postgresql://...``) that workers on several machines join with the
same command. Each trial samples the sweep's space (define-by-run, so a key with ``when:``
is sampled only where its condition holds), runs the pipeline in
``<output_dir>/trials/trial-<n>`` with the teacher stage, its cached targets and the float
twins shared by every trial (:func:`pipelines.orchestration.ablation.run_variants`), and
returns the objectives from the last stage that logs each. Its MLflow run is nested under the
sweep's run (tags ``facekd.sweep.study``, ``facekd.sweep.trial``; the sampled keys as params).

Pruning: the distillation's intermediate evaluations (``sweep.report_every_steps`` sets
``distill.train.eval_every_steps``) are reported to the trial. With one objective Optuna's
pruner decides (median, successive halving, Hyperband); with several (Optuna prunes single
objectives only) a median rule on the first accuracy objective does: a trial whose accuracy at
a step is worse than the median of the other trials' at that step stops. A pruned trial is
recorded PRUNED and exports nothing.

Faults: a trial that raises is recorded FAIL with the path of its traceback, and the sweep goes
on. A worker killed outright leaves its trial RUNNING; its heartbeat stops, and the next worker
fails it and re-runs it (Optuna's RetryHeartbeatStaleTrialCallback) in the same folder, so the
pipeline resumes from its stage checkpoints. Ctrl-C stops the running trial resumably (its
stages keep their checkpoints) and the study keeps every finished trial; the next start re-runs
it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import statistics
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core.config import ConfigError
from pipelines.core.sweep_config import Sweep, check_pruning, condition_holds, objective_stage
from pipelines.orchestration.ablation import Variant, _teacher_key, run_variants

HEARTBEAT_S, GRACE_S = 20, 60  # a worker silent for GRACE_S is taken for dead


def _heartbeat() -> tuple[int, int]:
    """(interval, grace) in seconds; ``FACEKD_SWEEP_GRACE_S`` shortens the grace (tests)."""
    grace = int(os.environ.get("FACEKD_SWEEP_GRACE_S", GRACE_S))
    return max(1, min(HEARTBEAT_S, grace // 3)), grace


class StorageError(ConfigError):
    """The study's storage does not answer."""


@dataclass
class SweepResult:
    study: str
    storage: str
    counts: dict[str, int]
    front: list[dict[str, Any]]
    trials: list[dict[str, Any]]
    pruned_minutes: float = 0.0
    saved_minutes: float = 0.0
    mlflow_run_id: str | None = None
    files: dict[str, str] = field(default_factory=dict)


def default_storage(sweep: Sweep) -> str:
    return f"sqlite:///{(sweep.base.output_dir() / 'optuna.db').resolve()}"


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at ``url`` with heartbeats (a killed worker's trial is retried)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lock = None
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # two workers creating a new SQLite study at once race in its schema migration
        # (the second dies on alembic_version): creation is serialised
        lock = open(db.with_name(db.name + ".lock"), "w")  # noqa: SIM115 - held below
        fcntl.flock(lock, fcntl.LOCK_EX)
    interval, grace = _heartbeat()
    try:
        return RDBStorage(
            url,
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    except Exception as exc:  # noqa: BLE001 - a bad URL, a server that does not answer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"study storage {url} does not answer: {first}") from None
    finally:
        if lock is not None:
            lock.close()  # releases the lock


def _sampler(sweep: Sweep) -> Any:
    import optuna

    name = sweep.section.sampler
    if name == "random":
        return optuna.samplers.RandomSampler()
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler()
    # constant_liar: parallel workers do not all propose the same point
    return optuna.samplers.TPESampler(constant_liar=True, multivariate=True, group=True)


def _pruner(sweep: Sweep) -> Any:
    import optuna

    p = sweep.section.pruner
    if p.name == "none" or len(sweep.section.objectives) > 1:
        return optuna.pruners.NopPruner()  # several objectives: _MedianRule decides
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_steps
        )
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.HyperbandPruner()


def open_study(sweep: Sweep, storage_url: str) -> Any:
    import optuna

    storage = open_storage(storage_url)
    directions = list(sweep.section.objectives.values())
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=sweep.study,
            directions=directions,
            sampler=_sampler(sweep),
            pruner=_pruner(sweep),
            load_if_exists=True,
        )
    except Exception as exc:  # noqa: BLE001 - e.g. a study of that name with other directions
        raise StorageError(f"study {sweep.study!r} at {storage_url}: {exc}") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"{sweep.path}: study {sweep.study!r} in {storage_url} optimises "
            f"{[d.name.lower() for d in study.directions]}, not {directions}: "
            "name another study (sweep.study)"
        )
    return study


def sample(trial: Any, sweep: Sweep) -> dict[str, Any]:
    """The trial's keys: each searched key whose ``when`` holds, in the space's order."""
    base = sweep.base.model_dump()
    params: dict[str, Any] = {}
    for key, p in sweep.section.space.items():
        if not condition_holds(p, params, base):
            continue
        if p.choices is not None:
            params[key] = _choice(trial, key, p.choices)
        elif p.int_range is not None:
            params[key] = trial.suggest_int(key, *p.int_range, step=int(p.step or 1), log=p.log)
        else:
            params[key] = trial.suggest_float(key, *p.float_range, step=p.step, log=p.log)
    return params


def _choice(trial: Any, key: str, choices: list[Any]) -> Any:
    """Optuna's categorical distribution takes scalars: other choices go by their JSON."""
    if all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        return trial.suggest_categorical(key, choices)
    encoded = [json.dumps(c, sort_keys=True) for c in choices]
    return json.loads(trial.suggest_categorical(key, encoded))


class _Pruning:
    """Reports the distill stage's evaluations to the trial and prunes it when told."""

    def __init__(self, trial: Any, sweep: Sweep, metric: str | None, study: Any) -> None:
        self.trial, self.sweep, self.metric, self.study = trial, sweep, metric, study
        self.several = len(sweep.section.objectives) > 1
        self.maximize = sweep.section.objectives.get(metric or "", "maximize") == "maximize"

    def __call__(self, stage: str, step: int, metrics: dict[str, float]) -> None:
        import optuna

        if self.metric is None or stage != "distill" or step == 0 or self.metric not in metrics:
            return
        value = float(metrics[self.metric])
        if not self.several:
            self.trial.report(value, step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"{self.metric} {value:.4f} at step {step}")
            return
        self.trial.set_user_attr(f"report.{step}", value)
        if self._below_median(step, value):
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at step {step}: below the median")

    def _below_median(self, step: int, value: float) -> bool:
        from optuna.trial import TrialState

        p = self.sweep.section.pruner
        if step < p.warmup_steps:
            return False
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(trials) < p.startup_trials:
            return False
        others = [
            t.user_attrs[f"report.{step}"]
            for t in self.study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
            if f"report.{step}" in t.user_attrs and t.number != self.trial.number
        ]
        if not others:
            return False
        median = statistics.median(others)
        return value < median if self.maximize else value > median


def _trial_config(sweep: Sweep, params: dict[str, Any], number: int, sweep_run: str | None) -> Any:
    cfg = sweep.trial_config(params, f"trial {number}")
    base_out = sweep.base.output_dir()
    cfg.pipeline.name = f"{sweep.study}-trial{number}"
    cfg.pipeline.output_dir = str(base_out / "trials" / f"trial-{number}")
    tags = {"facekd.sweep.study": sweep.study, "facekd.sweep.trial": str(number)}
    if sweep_run:
        tags["mlflow.parentRunId"] = sweep_run
    cfg.pipeline.tags = {**cfg.pipeline.tags, **tags}
    train = cfg.distill.train
    if sweep.section.report_every_steps:
        train.eval_every_steps = sweep.section.report_every_steps
    if sweep.section.budget.minutes_per_trial:
        train.max_minutes = sweep.section.budget.minutes_per_trial
    return cfg


def _objective_values(sweep: Sweep, cfg: Any, records: dict[str, Any]) -> list[float]:
    values = []
    for metric in sweep.section.objectives:
        stage = objective_stage(metric, cfg.stages)
        got = records.get(stage or "", {}).get("metrics", {}).get(metric)
        if got is None:
            raise ConfigError(
                f"trial {cfg.pipeline.name}: stage {stage} logged no {metric} "
                f"(it logged {sorted(records.get(stage or '', {}).get('metrics', {}))[:12]} ...)"
            )
        values.append(float(got))
    return values


def _resume_number(trial: Any) -> int:
    """The trial whose folder this one continues: a retried or interrupted trial's own."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" since Optuna 2.8
        first = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    if first is None:
        first = trial.user_attrs.get("resumes")
    return trial.number if first is None else int(first)


def _requeue_interrupted(study: Any) -> int:
    """Enqueue once more every trial that Ctrl-C stopped (and no trial continues yet)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs.get("resumes") for t in trials}
    n = 0
    for t in trials:
        interrupted = t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
        if interrupted and t.number not in continued:
            study.enqueue_trial(t.params, user_attrs={"resumes": t.number})
            n += 1
    return n


def _sweep_run(sweep: Sweep, study: Any, storage_url: str) -> str | None:
    """The sweep's MLflow run (one per study, shared by its workers), created on first use."""
    from pipelines.tracking.runs import Tracker

    existing = study.user_attrs.get("mlflow_run_id")
    tracker = Tracker(sweep.base.pipeline.experiment)
    if existing and tracker.run_info(existing) is not None:
        return existing
    client = tracker.mlflow.MlflowClient()
    run = client.create_run(
        tracker.experiment_id,
        run_name=f"sweep {sweep.study}",
        tags={
            "facekd.kind": "sweep",
            "facekd.sweep.study": sweep.study,
            "facekd.sweep.storage": storage_url,
        },
    )
    study.set_user_attr("mlflow_run_id", run.info.run_id)
    return study.user_attrs.get("mlflow_run_id", run.info.run_id)


def run_sweep(
    sweep: Sweep,
    storage_url: str | None = None,
    log: Any = print,
    trials: int | None = None,
) -> SweepResult:
    """Run trials until the study has ``trials`` (default ``sweep.budget.trials``) finished
    ones or this worker's minutes are spent; returns the study's front and counts."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from pipelines.core import logs

    metric = check_pruning(sweep)
    storage_url = storage_url or default_storage(sweep)
    study = open_study(sweep, storage_url)
    base_out = sweep.base.output_dir()
    base_out.mkdir(parents=True, exist_ok=True)
    logs.to_folder(base_out)
    sweep_run = _sweep_run(sweep, study, storage_url)
    requeued = _requeue_interrupted(study)
    if requeued:
        log(f"sweep {sweep.study}: {requeued} interrupted trial(s) queued to continue")
    budget = trials or sweep.section.budget.trials
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    log(f"sweep {sweep.study}: {done} of {budget} trials finished; storage {storage_url}")

    def objective(trial: Any) -> Any:
        number = _resume_number(trial)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = sample(trial, sweep)
        try:
            cfg = _trial_config(sweep, params, number, sweep_run)
        except ConfigError as exc:  # a sampled combination the schema refuses
            trial.set_user_attr("error", str(exc)[:500])
            log(f"trial {trial.number} failed: {exc}")
            raise
        trial.set_user_attr("output_dir", str(cfg.output_dir()))
        log(f"=== trial {trial.number} ({cfg.pipeline.name}): {json.dumps(params)} ===")
        start = time.monotonic()
        shares = "teacher" in cfg.stages and _teacher_key(cfg) == _teacher_key(sweep.base)
        variant = Variant(f"trial-{number}", cfg, shares_teacher=shares)
        from pipelines.training.fit import observing_evaluations

        try:
            with observing_evaluations(_Pruning(trial, sweep, metric, study)):
                ((_, records, _),) = run_variants([variant], base_out, log=log, lock_twins=True)
            values = _objective_values(sweep, cfg, records)
        except optuna.TrialPruned as exc:
            trial.set_user_attr("minutes", (time.monotonic() - start) / 60)
            log(f"trial {trial.number} pruned: {exc}")
            _label_run(cfg, params, "pruned")
            raise
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("interrupted", True)
            _label_run(cfg, params, "interrupted")
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as FAIL; the sweep goes on
            path = Path(cfg.output_dir()) / "trial_error.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(traceback.format_exc())
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            trial.set_user_attr("log", str(path))
            _label_run(cfg, params, "failed")
            log(f"trial {trial.number} failed: {type(exc).__name__}: {exc} (log: {path})")
            raise
        trial.set_user_attr("minutes", (time.monotonic() - start) / 60)
        run_id = _label_run(cfg, params, "complete")
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        return values if len(values) > 1 else values[0]

    remaining = max(0, budget - done)
    if remaining and "teacher" in sweep.base.stages:
        _shared_teacher(sweep, log)
    if remaining:
        minutes = sweep.section.budget.minutes
        study.optimize(
            objective,
            n_trials=3 * remaining + 3,  # failures do not loop forever
            timeout=minutes * 60 if minutes else None,
            catch=(Exception,),
            callbacks=[MaxTrialsCallback(budget, states=finished)],
            gc_after_trial=True,
        )
    return summarise(sweep, study, storage_url, sweep_run)


def _shared_teacher(sweep: Sweep, log: Any) -> None:
    """The teacher stage that the trials share, trained (or found) once: workers started
    together wait for the first instead of training it side by side."""
    import fcntl

    base_out = sweep.base.output_dir()
    cfg = sweep.base.model_copy(deep=True)
    cfg.stages = ["teacher"]
    cfg.pipeline.output_dir = str(base_out / "trials" / "teacher-only")
    cfg.pipeline.tags = {**cfg.pipeline.tags, "facekd.sweep.study": sweep.study}
    with open(base_out / ".teacher.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
        run_variants([Variant("teacher", cfg, shares_teacher=True)], base_out, log=log)


def _label_run(cfg: Any, params: dict[str, Any], state: str) -> str | None:
    """Params and the trial's state on its MLflow pipeline run; returns the run's id."""
    from pipelines.tracking.runs import Tracker

    try:
        tracker = Tracker(cfg.pipeline.experiment)
        out = str(Path(cfg.output_dir()).resolve())
        runs = tracker.mlflow.search_runs(
            [tracker.experiment_id],
            filter_string=f"tags.`facekd.output_dir` = '{out}'",
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
        parent = next((r for r in runs if "facekd.stage" not in r.data.tags), None)
        if parent is None:
            return None
        client = tracker.mlflow.MlflowClient()
        for key, value in params.items():
            client.log_param(parent.info.run_id, key, json.dumps(value)[:500])
        client.set_tag(parent.info.run_id, "facekd.sweep.state", state)
        if state == "pruned":
            client.set_terminated(parent.info.run_id, status="KILLED")
        return parent.info.run_id
    except Exception:  # noqa: BLE001 - labels are a convenience; the study holds the truth
        return None


def summarise(sweep: Sweep, study: Any, storage_url: str, sweep_run: str | None) -> SweepResult:
    """The study's front, counts and the time pruning saved."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): 0 for s in TrialState}
    rows = []
    for t in trials:
        counts[t.state.name.lower()] += 1
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "values": t.values,
                "params": t.params,
                "minutes": t.user_attrs.get("minutes"),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "output_dir": t.user_attrs.get("output_dir"),
                "log": t.user_attrs.get("log"),
            }
        )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front_numbers = {t.number for t in study.best_trials} if complete else set()
    front = [r for r in rows if r["number"] in front_numbers]
    full = [t.user_attrs["minutes"] for t in complete if "minutes" in t.user_attrs]
    pruned = [
        t.user_attrs["minutes"]
        for t in trials
        if t.state == TrialState.PRUNED and "minutes" in t.user_attrs
    ]
    typical = statistics.median(full) if full else 0.0
    saved = sum(max(0.0, typical - m) for m in pruned)
    return SweepResult(
        study=sweep.study,
        storage=storage_url,
        counts={k: v for k, v in counts.items() if v},
        front=front,
        trials=rows,
        pruned_minutes=sum(pruned),
        saved_minutes=saved,
        mlflow_run_id=sweep_run,
    )


def report_sweep(sweep: Sweep, result: SweepResult) -> SweepResult:
    """The front as ``<output_dir>/sweep-<study>.md`` / ``.json`` and its plot as ``.png``,
    also on the sweep's MLflow run (with the trial counts as metrics)."""
    from pipelines.evaluation.sweep_report import (
        front_table,
        plot_front,
        references_of,
        summary_lines,
    )

    objectives = dict(sweep.section.objectives)
    out = sweep.base.output_dir()
    stem = out / f"sweep-{sweep.study}"
    table = front_table(result, objectives)
    text = "\n".join([*summary_lines(result), "", table])
    Path(f"{stem}.md").write_text(text + "\n")
    rows = {k: v for k, v in result.__dict__.items() if k != "files"}
    Path(f"{stem}.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    records = []
    for row in result.trials:
        record = Path(row["output_dir"] or "-") / "evaluate" / "stage.json"
        if row["state"] == "complete" and record.is_file():
            records.append(json.loads(record.read_text()).get("metrics", {}))
    png = plot_front(result, objectives, Path(f"{stem}.png"), references_of(records, objectives))
    result.files = {"table": f"{stem}.md", "json": f"{stem}.json"}
    if png is not None:
        result.files["plot"] = str(png)
    if result.mlflow_run_id:
        try:
            from pipelines.tracking.runs import Tracker

            tracker = Tracker(sweep.base.pipeline.experiment)
            client = tracker.mlflow.MlflowClient()
            for path in result.files.values():
                client.log_artifact(result.mlflow_run_id, path)
            tracker.summarise(
                result.mlflow_run_id,
                {"facekd.sweep.front": ",".join(str(r["number"]) for r in result.front)},
                {f"sweep.trials.{k}": float(v) for k, v in result.counts.items()}
                | {"sweep.pruning_saved_minutes": result.saved_minutes},
            )
        except Exception as exc:  # noqa: BLE001 - the files are written either way
            print(f"note: the sweep's MLflow run was not updated: {exc}")
    return result
