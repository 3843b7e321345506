"""Releasing a student (``facekd release RUN_ID --name NAME``): register it in the MLflow Model
Registry and write its release bundle (LCE .tflite, float twin, ONNX, model card, metrics,
SHA256SUMS)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.core.config import ConfigError

ARTIFACTS = ("student_lce.tflite", "student_float.tflite", "student.onnx", "export_report.json")


class ReleaseError(ConfigError):
    """The run cannot be released as asked (unknown run, version exists, artifacts missing)."""


def _client() -> Any:
    from pipelines.tracking.runs import open_store, tracking_uri

    try:
        return open_store().MlflowClient()
    except Exception as exc:  # noqa: BLE001 - the store does not answer
        raise ReleaseError(f"MLflow tracking at {tracking_uri()} is not usable: {exc}") from exc


def pipeline_run(client: Any, run_id: str) -> Any:
    """The parent (pipeline) run of ``run_id``, which may be the parent or one of its stages."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - unknown id or unreachable store
        raise ReleaseError(f"run {run_id} not found in the tracking store: {exc}") from exc
    if "facekd.stage" in run.data.tags:
        run = client.get_run(run.data.tags["mlflow.parentRunId"])
    if run.data.tags.get("facekd.summary") != "1":
        raise ReleaseError(
            f"run {run.info.run_id} is not a finished facekd pipeline run (no facekd.summary "
            "tag); release the parent run listed by `facekd compare`"
        )
    if "facekd.run.export" not in run.data.tags or "bench.fps" not in run.data.metrics:
        raise ReleaseError(f"run {run.info.run_id} has no exported and evaluated student")
    return run


def _existing_versions(client: Any, name: str) -> list[Any]:
    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except Exception:  # noqa: BLE001 - no such registered model yet
        return []


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


PRIVACY_MODELS = (("teacher", "teacher"), ("twin", "float twin"), ("student", "1-bit student"))


def privacy_metrics(client: Any, run: Any) -> dict[str, float]:
    """``privacy.*`` of a pipeline run: its summary's, else its privacy stage run's
    (``facekd.run.privacy``); empty when no privacy analysis was run."""
    own = {k: v for k, v in run.data.metrics.items() if k.startswith("privacy.")}
    stage_id = run.data.tags.get("facekd.run.privacy")
    if own or not stage_id:
        return own
    try:
        stage = client.get_run(stage_id)
    except Exception:  # noqa: BLE001 - deleted stage run or unreachable store: no section
        return {}
    return {k: v for k, v in stage.data.metrics.items() if k.startswith("privacy.")}


def privacy_section(m: dict[str, float]) -> str:
    """The model card's privacy section from ``privacy.*`` metrics (a line when none)."""
    if not any(k.startswith("privacy.") for k in m):
        return (
            "## Privacy\nNo privacy analysis was run for this release (no `privacy.*` metrics).\n"
        )

    def attack(model: str, name: str) -> str:
        p = f"privacy.{model}.{name}."
        return (
            f"{_fmt(m.get(p + 'ssim'), '.3f')} | {_fmt(m.get(p + 'psnr'), '.2f')} "
            f"| {_fmt(m.get(p + 'accept'), '.3f')}"
        )

    def gradient(model: str, batch: str) -> str:
        p = f"privacy.{model}.gradient_{batch}."
        return f"{_fmt(m.get(p + 'psnr'), '.2f')} | {_fmt(m.get(p + 'accept'), '.3f')}"

    rows = "\n".join(
        f"| {label} | {attack(model, 'inversion')} | {attack(model, 'inversion_sign')} "
        f"| {gradient(model, 'b1')} | {gradient(model, 'b4')} "
        f"| {_fmt(m.get(f'privacy.{model}.templates.acc'), '.4f')} "
        f"| {_fmt(m.get(f'privacy.{model}.templates.sign_acc'), '.4f')} |"
        for model, label in PRIVACY_MODELS
    )
    sanity = m.get("privacy.sanity.gradient_b1.psnr")
    sanity_line = (
        ""
        if sanity is None
        else f"\nSanity check of the gradient attack (batch 1): PSNR {sanity:.2f} dB.\n"
    )
    return f"""## Privacy
How much of a face an attacker recovers from a template (embedding; sign template = its 1-bit
signs, matched by Hamming distance) or from the gradients of one training step (batch 1 / 4).
Accept is the share of reconstructions a judge model (the teacher, or the run's `privacy.judge`
parameter: `dlib` is independent of every facekd model) accepts as the person at FAR 1e-3: the
attack's success rate; lower SSIM / PSNR / accept = less leakage.

| model | inversion SSIM | inversion PSNR dB | inversion accept \
| sign inversion SSIM | sign inversion PSNR dB | sign inversion accept \
| gradient b1 PSNR dB | gradient b1 accept | gradient b4 PSNR dB | gradient b4 accept \
| template acc | sign template acc |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}

Judge: threshold {_fmt(m.get("privacy.judge.threshold"), ".4f")} (FAR 1e-3 on impostor \
pairs); it accepts {_fmt(m.get("privacy.judge.accept_genuine"), ".3f")} of real pairs of \
another image of the same person (the ceiling for accept). Template accuracies are \
verification accuracies on the attacked set (sign templates: Hamming matching).
{sanity_line}"""


def model_card(
    name: str,
    version: str,
    run: Any,
    embedding_size: int,
    report: dict[str, Any],
    privacy: dict[str, float] | None = None,
) -> str:
    """The release's model card: what goes in, what comes out, how good, how fast, privacy
    (``privacy``, else the run's ``privacy.*`` metrics), limits."""
    tags, m = run.data.tags, run.data.metrics
    if privacy is None:
        privacy = {k: v for k, v in m.items() if k.startswith("privacy.")}
    order = tags.get("facekd.eval_set", "").split(",")
    sets = sorted(
        (
            k[len("verify.") : -len(".acc")]
            for k in m
            if k.startswith("verify.") and k.endswith(".acc") and k != "verify.mean.acc"
        ),
        key=lambda name: (order.index(name) if name in order else len(order), name),
    )
    acc_rows = "\n".join(
        f"| {s} | {_fmt(m.get(f'verify.{s}.acc'), '.4f')} +- "
        f"{_fmt(m.get(f'verify.{s}.acc_std'), '.4f')} | {_fmt(m.get(f'verify.{s}.auc'), '.4f')} "
        f"| {_fmt(m.get(f'verify.{s}.tar_far1e-3'), '.4f')} "
        f"| {_fmt(m.get(f'verify.{s}.acc_at_far'), '.4f')} "
        f"| {_fmt(m.get(f'pytorch.verify.{s}.acc'), '.4f')} "
        f"| {_fmt(m.get(f'teacher.verify.{s}.acc'), '.4f')} |"
        for s in sets
    )
    if len(sets) > 1:
        acc_rows += (
            f"\n| mean | {_fmt(m.get('verify.mean.acc'), '.4f')} | | | "
            f"| {_fmt(m.get('pytorch.verify.mean.acc'), '.4f')} "
            f"| {_fmt(m.get('teacher.verify.mean.acc'), '.4f')} |"
        )
    threshold = m.get("verify.threshold_at_far")
    threshold_note = (
        ""
        if threshold is None
        else f"\nFixed threshold: cosine >= {threshold:.4f}, chosen on one set for a false "
        "accept rate (`data.threshold_from`, `data.threshold_far`), kept for every set.\n"
    )
    coverage = m.get("export.bconv_coverage")
    return f"""# {name} {version}

A 1-bit face recognition student released by facekd on {time.strftime("%Y-%m-%d")}
from MLflow run `{run.info.run_id}` (pipeline `{tags.get("facekd.pipeline", "?")}`).

## Model
- student: `{tags.get("facekd.student")}` {tags.get("facekd.student_args", "")}, weights and \
activations {tags.get("facekd.bits")} in its binary convolutions
- teacher: `{tags.get("facekd.teacher")}`
- distillation: `{tags.get("facekd.distill.method")}`
- training data: `{tags.get("facekd.data.train")}`
- parameters: {_fmt(m.get("model.params"), ",.0f")}; 1-bit MACs \
{_fmt(m.get("model.binary_macs"), ",.0f")}; 32-bit MACs {_fmt(m.get("model.float_macs"), ",.0f")}
- LCE flatbuffer: {_fmt(m.get("model.size_bytes"), ",.0f")} bytes; \
LceBconv2d coverage {_fmt(coverage, ".2f")} ({report.get("converter", "?")} converter)

## Input and output
- input: one aligned face (5-point ArcFace alignment, 112x112 RGB), uint8 -> float32
  `(x - 127.5) / 128`, NHWC `(1, 112, 112, 3)` in the `.tflite` (NCHW `(N, 3, 112, 112)` in ONNX)
- output: a {embedding_size}-d embedding, not normalised: compare faces by cosine similarity
- MLflow pyfunc: uint8 `(N, 112, 112, 3)` -> float32 `(N, {embedding_size})`

## Verification accuracy (10-fold, LCE `.tflite`)
| set | accuracy | ROC AUC | TAR@FAR=1e-3 | acc at fixed threshold | PyTorch student | teacher |
|---|---|---|---|---|---|---|
{acc_rows}
{threshold_note}
## Speed (batch 1, {_fmt(m.get("bench.threads"), ".0f")} thread)
measured on: {tags.get("facekd.bench_machine", "unknown machine")}

| runtime | median latency ms | FPS |
|---|---|---|
| LCE interpreter, indirect BGEMM (`student_lce.tflite`) | \
{_fmt(m.get("bench.latency_ms_p50"), ".2f")} | {_fmt(m.get("bench.fps"), ".0f")} |
| TFLite + XNNPACK, float twin (`student_float.tflite`) | \
{_fmt(m.get("bench.float_latency_ms_p50"), ".2f")} | {_fmt(m.get("bench.float_fps"), ".0f")} |
| teacher, ONNX Runtime | {_fmt(m.get("bench.teacher_latency_ms_p50"), ".2f")} | |

{privacy_section(privacy)}
## Known limits
- Latencies above come from the machine named there. On x86 LCE has only generic C++ kernels;
  the target is ARM: measure on the device with LCE's `lce_benchmark_model` (see docs/export.md).
- Accuracy is measured on the sets listed only, with the pairs of that run; other populations,
  poses, image quality and alignment methods can be worse.
- Faces must be aligned like the training data; unaligned crops lose most of the accuracy.
- The float twin has the same architecture with binarizers removed and the same weights: it is
  a speed baseline, not an accurate model.
"""


def release(run_id: str, name: str, version: str | None, output: Path) -> Path:
    """Register the run's student and write its bundle; returns the bundle folder."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from export.runtime import TFLiteRunner
    from pipelines.tracking.bundle import images_to_input, sha256_bytes, write_sums
    from pipelines.tracking.pyfunc_model import CODE_FILE, model_config

    client = _client()
    run = pipeline_run(client, run_id)
    existing = _existing_versions(client, name)
    if version is None:
        version = str(max((int(v.version) for v in existing), default=0) + 1)
    for v in existing:
        if v.tags.get("facekd.version") == version:
            raise ReleaseError(
                f"{name} version {version} is already registered (model version {v.version}); "
                "a release never overwrites one: choose another --version"
            )
    bundle = output / name / version
    if bundle.exists():
        raise ReleaseError(f"{bundle} already exists; a release never overwrites one")

    export_run = run.data.tags["facekd.run.export"]
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=output))
    try:
        for artifact in ARTIFACTS:
            try:
                mlflow.artifacts.download_artifacts(
                    run_id=export_run, artifact_path=artifact, dst_path=str(staging)
                )
            except Exception as exc:  # noqa: BLE001
                raise ReleaseError(
                    f"artifact {artifact} of export run {export_run} cannot be fetched: {exc}"
                ) from exc
        report = json.loads((staging / "export_report.json").read_text())
        (staging / "export_report.json").unlink()
        lce = (staging / "student_lce.tflite").read_bytes()
        probe = np.zeros((1, 112, 112, 3), dtype=np.uint8)
        embedding_size = TFLiteRunner(lce).embed(images_to_input(probe)).shape[1]
        privacy = privacy_metrics(client, run)
        (staging / "model_card.md").write_text(
            model_card(name, version, run, embedding_size, report, privacy)
        )
        metrics = {
            "name": name,
            "version": version,
            "source_run": run.info.run_id,
            "metrics": dict(sorted({**run.data.metrics, **privacy}.items())),
            "tags": {k: v for k, v in sorted(run.data.tags.items()) if k.startswith("facekd.")},
        }
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_sums(staging)

        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 112, 112, 3))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embedding_size))]),
        )
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        with (
            contextlib.redirect_stdout(sys.stderr),
            mlflow.start_run(
                run_name=f"release {name} {version}",
                tags={"facekd.kind": "release", "facekd.source_run": run.info.run_id},
            ),
        ):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(CODE_FILE),  # models from code: no pickled object
                model_config=model_config(sha256_bytes(lce)),
                artifacts={"lce_tflite": str(staging / "student_lce.tflite")},
                signature=signature,
                registered_model_name=name,
            )
            mlflow.log_artifacts(str(staging), artifact_path="bundle")
        registered = info.registered_model_version
        client.set_model_version_tag(name, str(registered), "facekd.version", version)
        client.set_model_version_tag(name, str(registered), "facekd.source_run", run.info.run_id)
        bundle.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, bundle)  # fails if another release took the folder meanwhile
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return bundle
