"""MLflow tracking: the embedded default store, one parent run per invocation, nested stages."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_STORE = Path("mlruns")


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used."""


def tracking_uri(create: bool = True) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded ``mlruns/mlflow.db`` (SQLite) of the
    current folder, as an absolute path: MLflow caches one store per URI string, so a relative
    URI would keep writing to the first folder's database after a change of folder.
    ``create``: make the ``mlruns`` folder when it is missing."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if create:
        DEFAULT_STORE.mkdir(exist_ok=True)
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # facekd prints its own "MLflow: <uri> run <id>" line; MLflow's links to stdout are noise
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """Connects to the tracking store and opens runs; checked before any training starts."""

    def __init__(self, experiment: str) -> None:
        _quiet()
        import mlflow

        self.mlflow = mlflow
        self.uri = tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        try:
            exp = mlflow.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:") and "MLFLOW_TRACKING_URI" not in os.environ:
                    location = (DEFAULT_STORE / "artifacts").resolve().as_uri()
                mlflow.create_experiment(experiment, artifact_location=location)
            self.experiment_id = mlflow.set_experiment(experiment).experiment_id
        except Exception as exc:  # noqa: BLE001 - any backend failure means: do not start
            raise TrackingError(f"MLflow tracking at {self.uri} is not usable: {exc}") from exc

    def run_info(self, run_id: str | None) -> Any | None:
        """The run's info and tags (``mlflow.entities.Run``), or None if it is not in this store."""
        if not run_id:
            return None
        try:
            run = self.mlflow.get_run(run_id)
        except Exception:  # noqa: BLE001 - unknown id, or another store
            return None
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return None
        return run

    @contextmanager
    def parent_run(
        self, name: str, tags: dict[str, str], resume: str | None = None
    ) -> Iterator[str]:
        """The run that groups a pipeline's stages; ``resume`` reopens an interrupted one.

        Ends FAILED on an exception, FINISHED otherwise.
        """
        if self.run_info(resume) is None:
            resume = None
        with self.mlflow.start_run(run_id=resume, run_name=name, tags=tags) as run:
            yield run.info.run_id

    @contextmanager
    def stage_run(
        self, stage: str, tags: dict[str, str], resume: str | None = None
    ) -> Iterator[StageRun]:
        """A nested run for one stage, tagged ``facekd.stage``; ``resume`` reopens one."""
        with self.mlflow.start_run(
            run_id=resume, run_name=stage, nested=True, tags={"facekd.stage": stage, **tags}
        ) as run:
            yield StageRun(self.mlflow, run.info.run_id)

    def summarise(self, run_id: str, tags: dict[str, str], metrics: dict[str, float]) -> None:
        """Tags and metrics on a (parent) run, overwriting earlier values."""
        client = self.mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        if metrics:
            client.log_batch(
                run_id,
                metrics=[
                    self.mlflow.entities.Metric(k, v, int(time.time() * 1000), 0)
                    for k, v in metrics.items()
                ],
            )

    def close_orphans(self, output_dir: str, keep: set[str]) -> list[str]:
        """Mark runs of ``output_dir`` left RUNNING by a killed process as KILLED.

        Only call while holding the output folder's lock: no live process owns them then.
        """
        runs = self.mlflow.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`facekd.output_dir` = '{output_dir}' and attributes.status = 'RUNNING'"
            ),
            output_format="list",
        )
        client = self.mlflow.MlflowClient()
        closed = []
        for run in runs:
            if run.info.run_id not in keep:
                client.set_terminated(run.info.run_id, status="KILLED")
                closed.append(run.info.run_id)
        return closed


class StageRun:
    """What a stage may log: params, metrics (with a step), artifacts, tags."""

    def __init__(self, mlflow: Any, run_id: str) -> None:
        self.mlflow, self.run_id = mlflow, run_id

    def params(self, params: dict[str, Any]) -> None:
        clean = {k: ("" if v is None else str(v))[:6000] for k, v in params.items()}
        items = list(clean.items())
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i : i + 100]))

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def artifact(self, path: str | os.PathLike, folder: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self.mlflow.log_artifacts(str(p), artifact_path=folder)
        elif p.exists():
            self.mlflow.log_artifact(str(p), artifact_path=folder)

    def tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)


class NullStageRun(StageRun):
    """A stage run that logs nothing: what distributed worker processes (rank > 0) get, so
    that one run per stage reaches MLflow, from rank 0."""

    def __init__(self) -> None:
        super().__init__(None, "")

    def params(self, params: dict[str, Any]) -> None:
        pass

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def artifact(self, path: str | os.PathLike, folder: str | None = None) -> None:
        pass

    def tags(self, tags: dict[str, str]) -> None:
        pass
