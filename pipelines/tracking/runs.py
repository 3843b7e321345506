"""MLflow tracking: the embedded default store, one parent run per invocation, nested stages."""

from __future__ import annotations

import fcntl
import json
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


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold ``<database>.lock`` beside an SQLite store (no lock for other stores).

    MLflow creates and migrates a new SQLite store in the first process that opens it; two
    processes doing so at once race in the migration and the second dies ("Online migration
    expected to match one row ... 0 found"). Taken around the store's creation and the
    experiment's, it lets any number of runs start at once on a new checkout."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    lock = Path(uri[len(prefix) :]).with_name(Path(uri[len(prefix) :]).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_store(uri: str | None = None) -> Any:
    """``mlflow``, pointed at ``uri`` (default :func:`tracking_uri`), its store created (and
    migrated) under :func:`store_lock`; MLflow then keeps the store for this process."""
    _quiet()
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        mlflow.search_experiments(max_results=1)
    return mlflow


class Tracker:
    """Connects to the tracking store and opens runs; checked before any training starts."""

    def __init__(self, experiment: str) -> None:
        self.uri = tracking_uri()
        try:
            self.mlflow = mlflow = open_store(self.uri)
            with store_lock(self.uri):  # two new runs must not both create the experiment
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
        self,
        stage: str,
        tags: dict[str, str],
        resume: str | None = None,
        outbox: Path | None = None,
    ) -> Iterator[StageRun]:
        """A nested run for one stage, tagged ``facekd.stage``; ``resume`` reopens one.

        ``outbox``: where its metrics wait while the tracking server does not answer."""
        with self.mlflow.start_run(
            run_id=resume, run_name=stage, nested=True, tags={"facekd.stage": stage, **tags}
        ) as run:
            yield StageRun(self.mlflow, run.info.run_id, outbox)

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


OUTBOX = "pending_metrics.jsonl"


def send_pending(mlflow: Any, outbox: Path) -> int:
    """Send the metrics kept in ``outbox`` (one JSON line per call) and remove it.

    Returns the number of metric values sent; raises when the server still does not answer
    (the file is then left as it was)."""
    if not outbox.is_file():
        return 0
    client = mlflow.MlflowClient()
    sent = 0
    lines = [json.loads(line) for line in outbox.read_text().splitlines() if line.strip()]
    for entry in lines:
        metrics = [
            mlflow.entities.Metric(k, float(v), int(entry["timestamp_ms"]), entry["step"] or 0)
            for k, v in entry["metrics"].items()
        ]
        client.log_batch(entry["run_id"], metrics=metrics)
        sent += len(metrics)
    outbox.unlink()
    return sent


def pending_outboxes(folder: Path) -> list[Path]:
    """The metric outboxes of a pipeline's output folder (one per stage that has one)."""
    return sorted(folder.rglob(OUTBOX))


def send_all(outboxes: list[Path]) -> int:
    """Send every outbox to the tracking server (``MLFLOW_TRACKING_URI`` or the embedded
    store); raises :class:`TrackingError` naming the file when the server does not answer."""
    try:
        mlflow = open_store()
    except Exception as exc:  # noqa: BLE001 - the server does not answer
        raise TrackingError(f"MLflow tracking at {tracking_uri()} is not usable: {exc}") from exc
    sent = 0
    for outbox in outboxes:
        try:
            sent += send_pending(mlflow, outbox)
        except Exception as exc:  # noqa: BLE001 - the server, or a run it does not know
            raise TrackingError(f"could not send {outbox} to {tracking_uri()}: {exc}") from exc
    return sent


class StageRun:
    """What a stage may log: params, metrics (with a step), artifacts, tags.

    With an ``outbox`` file, metrics that the tracking server does not take (it stopped
    answering in the middle of a long training) are appended there with their run, step
    and time, training goes on, and they are sent first thing when it answers again (or by
    ``facekd sync``): none is lost."""

    def __init__(self, mlflow: Any, run_id: str, outbox: Path | None = None) -> None:
        self.mlflow, self.run_id, self.outbox = mlflow, run_id, outbox
        self._warned = False

    def params(self, params: dict[str, Any]) -> None:
        clean = {k: ("" if v is None else str(v))[:6000] for k, v in params.items()}
        items = list(clean.items())
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i : i + 100]))

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if not clean:
            return
        if self.outbox is None:
            self.mlflow.log_metrics(clean, step=step)
            return
        entry = {
            "run_id": self.run_id,
            "step": step,
            "timestamp_ms": int(time.time() * 1000),
            "metrics": clean,
        }
        try:
            send_pending(self.mlflow, self.outbox)
            self.mlflow.MlflowClient().log_batch(
                self.run_id,
                metrics=[
                    self.mlflow.entities.Metric(k, v, entry["timestamp_ms"], step or 0)
                    for k, v in clean.items()
                ],
            )
        except Exception as exc:  # noqa: BLE001 - any failure of the server: keep them
            self.outbox.parent.mkdir(parents=True, exist_ok=True)
            with open(self.outbox, "a") as f:
                f.write(json.dumps(entry) + "\n")
            if not self._warned:
                self._warned = True
                from pipelines.core import logs

                print(
                    f"warning: the tracking server does not answer ({type(exc).__name__}); "
                    f"training goes on, metrics are kept in {self.outbox} and sent when it "
                    "answers again (or: facekd sync <run folder>)",
                    file=logs.terminal(),
                    flush=True,
                )

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
        super().__init__(None, "", None)

    def params(self, params: dict[str, Any]) -> None:
        pass

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def artifact(self, path: str | os.PathLike, folder: str | None = None) -> None:
        pass

    def tags(self, tags: dict[str, str]) -> None:
        pass
