"""Runs a pipeline: fingerprints, cache of finished stages, MLflow runs, lock, summary."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pipelines.core.artifacts import atomic_write_json, file_hash
from pipelines.core.config import STAGE_ORDER, ConfigError, PipelineConfig, flatten
from pipelines.orchestration.summary import machine_description, run_summary
from pipelines.tracking.runs import OUTBOX
from pipelines.training.data import DataContext

RECORD = "stage.json"
ACTIVE = "active_run.json"
"""The MLflow parent run of an invocation that has not finished (killed or interrupted)."""


class PipelineBusyError(RuntimeError):
    """Another facekd run holds the output folder."""


@dataclass
class StagePlan:
    name: str
    fingerprint: str = ""
    cached: bool = False
    record: dict[str, Any] = field(default_factory=dict)


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def output_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on the output folder for the whole invocation."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / ".lock", "w")  # noqa: SIM115 - held for the block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise PipelineBusyError(
            f"another facekd run is using {output_dir} (lock {output_dir / '.lock'}); "
            "wait for it to finish or choose another pipeline.output_dir"
        ) from None
    try:
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _read_json(path: Path) -> dict[str, Any]:
    """A small JSON state file, or {} when it is missing or unreadable (a crash mid-write)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Orchestrator:
    """Plans and runs the stages of one pipeline configuration."""

    def __init__(self, config: PipelineConfig, log: Any = print) -> None:
        from pipelines.orchestration.stages import STAGES

        self.config = config
        self.output_dir = config.output_dir()
        self.data = DataContext(config, self.output_dir)
        self.stages = STAGES
        self.log = log

    # -- planning -------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.output_dir / name

    def read_record(self, name: str) -> dict[str, Any] | None:
        path = self.stage_dir(name) / RECORD
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _upstream_hashes(self, name: str, produced: dict[str, dict[str, Any]]) -> dict[str, str]:
        stage = self.stages[name]
        hashes = {}
        for art in stage.inputs_needed(self.config):
            if art not in produced:
                owner = next((s for s in STAGE_ORDER if art in self.stages[s].produces), "?")
                raise ConfigError(
                    f"stage {name!r} needs {art!r} from stage {owner!r}: run "
                    f"`facekd run ... --only {owner}` (or the whole pipeline) first"
                )
            hashes[art] = produced[art]["sha256"]
        return hashes

    def fingerprint(self, name: str, produced: dict[str, dict[str, Any]]) -> str:
        stage = self.stages[name]
        return _hash(
            {
                "stage": name,
                "settings": stage.settings(self.config),
                "data": self.data.fingerprint(),
                "external": stage.external_inputs(self.config),
                "inputs": self._upstream_hashes(name, produced),
                "seed": self.config.pipeline.seed,
                "facekd": version("facekd"),
            }
        )

    def outputs_intact(self, record: dict[str, Any]) -> bool:
        """All artifacts the stage produces are recorded, present and unchanged."""
        produces = (
            self.stages[record.get("stage", "")].produces
            if record.get("stage") in self.stages
            else ()
        )
        if not set(produces) <= set(record.get("outputs", {})):
            return False
        for out in record.get("outputs", {}).values():
            p = Path(out["path"])
            if not p.exists() or file_hash(p) != out["sha256"]:
                return False
        return True

    def plan(
        self, selected: list[str], force: bool
    ) -> tuple[list[StagePlan], dict[str, dict[str, Any]]]:
        """Decide which stages run; earlier stages' records provide inputs to later ones."""
        produced: dict[str, dict[str, Any]] = {}
        plans: list[StagePlan] = []
        for name in self.config.stages:
            record = self.read_record(name)
            if name not in selected:
                if record and self.outputs_intact(record):
                    produced.update(record["outputs"])
                continue
            fp = self.fingerprint(name, produced)
            cached = (
                not force
                and record is not None
                and record.get("fingerprint") == fp
                and self.outputs_intact(record)
            )
            plan = StagePlan(name, fp, cached, record or {})
            plans.append(plan)
            if cached:
                produced.update(record["outputs"])
            else:
                # later fingerprints depend on this stage's outputs: decided once it has run
                return plans + [
                    StagePlan(n)
                    for n in selected
                    if n not in {p.name for p in plans}
                    and STAGE_ORDER.index(n) > STAGE_ORDER.index(name)
                ], produced
        return plans, produced

    # -- running --------------------------------------------------------------------------
    def run(
        self, only: str | None = None, start: str | None = None, force: bool = False
    ) -> dict[str, dict[str, Any]]:
        """Run the selected stages; returns the records of all stages of the pipeline."""
        selected = list(self.config.stages)
        for flag, value in (("--only", only), ("--from", start)):
            if value is not None and value not in selected:
                raise ConfigError(
                    f"{flag} {value}: not a stage of this pipeline ({', '.join(selected)})"
                )
        if only:
            selected = [only]
        elif start:
            selected = selected[selected.index(start) :]
        from pipelines.training.fit import distributed_worker_rank

        if distributed_worker_rank() > 0:
            return self._run_as_distributed_worker(selected, force)

        with output_lock(self.output_dir):
            plans, produced = self.plan(selected, force)
            todo = [p for p in plans if not p.cached]
            for p in plans:
                if p.cached:
                    self.log(f"[{p.name}] up to date (fingerprint {p.fingerprint[:12]}), skipped")
            if not todo:
                self.log(
                    f"nothing to do: all {len(plans)} selected stage(s) are up to date "
                    "(use --force to re-run)"
                )
                return self.records()
            from pipelines.tracking.runs import Tracker

            tracker = Tracker(self.config.pipeline.experiment)
            out_dir = str(self.output_dir.resolve())
            tags = {
                "facekd.pipeline": self.config.pipeline.name,
                "facekd.output_dir": out_dir,
                "facekd.command": " ".join(sys.argv),
                # at the start, so that a run that never finishes (a pruned sweep trial) is
                # already nested and labelled (mlflow.parentRunId)
                **self.config.pipeline.tags,
            }
            active_path = self.output_dir / ACTIVE
            interrupted = _read_json(active_path).get("parent_run_id")
            resume = interrupted if tracker.run_info(interrupted) is not None else None
            try:
                with tracker.parent_run(self.config.pipeline.name, tags, resume) as parent_id:
                    atomic_write_json(active_path, {"parent_run_id": parent_id, "pid": os.getpid()})
                    if resume:
                        self.log(f"MLflow: {tracker.uri} run {parent_id} (resumed)")
                    else:
                        self.log(f"MLflow: {tracker.uri} run {parent_id}")
                    keep = {parent_id} | self._resumable_stage_runs(tracker, parent_id)
                    for run_id in tracker.close_orphans(out_dir, keep):
                        self.log(f"MLflow: run {run_id} of a killed process marked KILLED")
                    for plan in plans:
                        if plan.cached:
                            continue
                        plan.fingerprint = self.fingerprint(plan.name, produced)
                        old = self.read_record(plan.name)
                        if (
                            not force
                            and old
                            and old.get("fingerprint") == plan.fingerprint
                            and self.outputs_intact(old)
                        ):
                            self.log(f"[{plan.name}] up to date, skipped")
                            produced.update(old["outputs"])
                            continue
                        record = self._execute(plan, produced, tracker, parent_id)
                        produced.update(record["outputs"])
                    tags, metrics = run_summary(self.records(), self.config, self.data.eval_names)
                    tracker.summarise(parent_id, tags, metrics)
            except (KeyboardInterrupt, SystemExit):
                raise  # interrupted (Lightning turns Ctrl-C into SystemExit): resumable
            except BaseException:
                active_path.unlink(missing_ok=True)
                raise
            active_path.unlink(missing_ok=True)
        return self.records()

    def _run_as_distributed_worker(
        self, selected: list[str], force: bool
    ) -> dict[str, dict[str, Any]]:
        """A ``ddp`` worker process (rank > 0, started by Lightning re-running the command):
        join the training of the stage that rank 0 is running, without the output lock,
        MLflow runs or records (rank 0 writes those); the process ends after training."""
        from pipelines.orchestration.stages import StageContext
        from pipelines.tracking.runs import NullStageRun

        plans, produced = self.plan(selected, force)
        for plan in plans:
            if plan.cached:
                continue
            plan.fingerprint = self.fingerprint(plan.name, produced)
            old = self.read_record(plan.name)
            if not force and old and old.get("fingerprint") == plan.fingerprint:
                produced.update(old["outputs"])
                continue
            if not self._trains_distributed(plan.name):
                # another node's process: rank 0 runs the stages that are not spread over
                # nodes (a pretrained teacher, export); this one joins the one that is
                produced.update(self._wait_for_record(plan.name, plan.fingerprint)["outputs"])
                continue
            inputs = {k: Path(v["path"]) for k, v in produced.items()}
            ctx = StageContext(
                self.config, self.data, self.stage_dir(plan.name), inputs, NullStageRun()
            )
            _seed_everything(self.config.pipeline.seed)
            self.stages[plan.name].run(ctx)  # exits after its training (pipelines.training.fit)
            break
        raise RuntimeError(
            "this process was started as a distributed worker (LOCAL_RANK/NODE_RANK > 0) but "
            "no stage of the pipeline trains: nothing to join"
        )

    def _trains_distributed(self, name: str) -> bool:
        """Whether stage ``name`` trains with more than one process (devices or nodes)."""
        if name == "teacher" and self.config.teacher.checkpoint:
            return False
        train = getattr(getattr(self.config, name, None), "train", None)
        if train is None:
            return False
        return train.num_nodes > 1 or str(train.devices) not in ("1", "auto", "cpu")

    def _wait_for_record(
        self, name: str, fingerprint: str, timeout_s: float = 24 * 3600
    ) -> dict[str, Any]:
        """The record of stage ``name`` once rank 0 has finished it with ``fingerprint``."""
        self.log(f"[{name}] waiting for rank 0 to finish it ...")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self.read_record(name)
            if record and record.get("fingerprint") == fingerprint:
                return record
            time.sleep(2.0)
        raise RuntimeError(f"[{name}] rank 0 did not finish this stage in {timeout_s:.0f} s")

    def _resumable_stage_runs(self, tracker: Any, parent_id: str) -> set[str]:
        """Stage runs of interrupted stages that belong to ``parent_id`` (resumed, not closed)."""
        keep = set()
        for name in self.config.stages:
            run_id = _read_json(self.stage_dir(name) / "running.json").get("mlflow_run_id")
            run = tracker.run_info(run_id)
            if run is not None and run.data.tags.get("mlflow.parentRunId") == parent_id:
                keep.add(run_id)
        return keep

    def _execute(
        self, plan: StagePlan, produced: dict[str, dict[str, Any]], tracker: Any, parent_id: str
    ) -> dict[str, Any]:
        from pipelines.orchestration.stages import StageContext

        name = plan.name
        stage = self.stages[name]
        stage_dir = self.stage_dir(name)
        stage_dir.mkdir(parents=True, exist_ok=True)
        running = stage_dir / "running.json"
        previous = _read_json(running)
        resume_run = None
        if previous.get("fingerprint") != plan.fingerprint:
            if (stage_dir / "checkpoints").exists():
                shutil.rmtree(stage_dir / "checkpoints")  # checkpoints of other settings
        else:
            run = tracker.run_info(previous.get("mlflow_run_id"))
            if run is not None and run.data.tags.get("mlflow.parentRunId") == parent_id:
                resume_run = run.info.run_id
        (stage_dir / RECORD).unlink(missing_ok=True)
        inputs = {k: Path(v["path"]) for k, v in produced.items()}
        t0 = time.time()
        self.log(f"[{name}] running ..." if resume_run is None else f"[{name}] resuming ...")
        stage_tags = {
            "facekd.fingerprint": plan.fingerprint,
            "facekd.output_dir": str(self.output_dir.resolve()),
        }
        outbox = self.stage_dir(name) / OUTBOX
        with tracker.stage_run(name, stage_tags, resume_run, outbox) as run:
            atomic_write_json(
                running,
                {"fingerprint": plan.fingerprint, "pid": os.getpid(), "mlflow_run_id": run.run_id},
            )
            params = flatten(stage.settings(self.config), f"{name}.")
            params.update(flatten(self.config.data.model_dump(), "data."))
            params.update(
                {
                    "pipeline.name": self.config.pipeline.name,
                    "pipeline.seed": self.config.pipeline.seed,
                }
            )
            run.params(params)
            ctx = StageContext(self.config, self.data, stage_dir, inputs, run)
            _seed_everything(self.config.pipeline.seed)  # same seed, same initial weights
            result = stage.run(ctx)
            seconds = time.time() - t0
            metrics = {**result.metrics, f"time.{name}_s": seconds}
            if self.data.skipped_images:
                metrics["data.skipped_images"] = float(len(self.data.skipped_images))
                run.artifact(self.output_dir / "skipped_images.txt")
            run.metrics(metrics)
            for path in result.outputs.values():
                run.artifact(path)
            record = {
                "stage": name,
                "fingerprint": plan.fingerprint,
                "metrics": metrics,
                "outputs": {
                    k: {"path": str(Path(p).resolve()), "sha256": file_hash(p)}
                    for k, p in result.outputs.items()
                },
                "mlflow_run_id": run.run_id,
                "mlflow_parent_run_id": parent_id,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "seconds": seconds,
                "machine": machine_description(),
            }
        atomic_write_json(stage_dir / RECORD, record)
        running.unlink(missing_ok=True)
        self.log(f"[{name}] done in {seconds:.0f} s")
        return record

    def records(self) -> dict[str, dict[str, Any]]:
        return {n: r for n in self.config.stages if (r := self.read_record(n)) is not None}
