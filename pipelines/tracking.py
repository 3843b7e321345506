"""MLflow tracking: the embedded default store, one parent run per invocation, nested stages."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_STORE = Path("mlruns")


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used."""


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded ``sqlite:///mlruns/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_STORE.mkdir(exist_ok=True)
    return f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
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
            mlflow.set_experiment(experiment)
        except Exception as exc:  # noqa: BLE001 - any backend failure means: do not start
            raise TrackingError(f"MLflow tracking at {self.uri} is not usable: {exc}") from exc

    @contextmanager
    def parent_run(self, name: str, tags: dict[str, str]) -> Iterator[str]:
        """The run that groups one invocation's stages; ends FAILED on an exception."""
        with self.mlflow.start_run(run_name=name, tags=tags) as run:
            yield run.info.run_id

    @contextmanager
    def stage_run(self, stage: str, tags: dict[str, str]) -> Iterator[StageRun]:
        """A nested run for one stage, tagged ``facekd.stage``."""
        with self.mlflow.start_run(
            run_name=stage, nested=True, tags={"facekd.stage": stage, **tags}
        ) as run:
            yield StageRun(self.mlflow, run.info.run_id)


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
