"""The four stages: what each needs, what it produces, and how it runs.

Only this layer knows the order of stages and how their artifacts connect; the work itself
is done by ``teachers``, ``students``, ``distill`` and ``export``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from faces.evaluate import pair_scores, torch_embed_fn, verify_metrics
from faces.verification import roc_curve, save_roc_plot
from pipelines.artifacts import atomic_write_json, load_model, save_model
from pipelines.config import PipelineConfig
from pipelines.data import DataContext
from pipelines.tracking import StageRun
from teachers.checkpoint import load_checkpoint_into, sha256_file


@dataclass
class StageContext:
    """What a running stage gets: settings, data, its folder, upstream artifacts, its run."""

    config: PipelineConfig
    data: DataContext
    stage_dir: Path
    inputs: dict[str, Path]
    run: StageRun


@dataclass
class StageResult:
    outputs: dict[str, Path]
    metrics: dict[str, float]


class Stage(ABC):
    """Base class: ``needs`` artifacts of earlier stages, ``produces`` named artifacts."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        """The part of the configuration that determines this stage's result."""
        return getattr(config, self.name).model_dump()

    def external_inputs(self, config: PipelineConfig) -> dict[str, str]:
        """Hashes of files named in the config (not produced by a stage)."""
        return {}

    @abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Do the stage's work in ``ctx.stage_dir``; return its artifacts and metrics."""


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _roc_artifact(ctx: StageContext, curves: dict[str, Any], name: str = "roc.png") -> Path:
    path = ctx.stage_dir / name
    save_roc_plot(curves, path, title=f"ROC on {ctx.data.eval_name}")
    return path


class TeacherStage(Stage):
    """Load a pretrained teacher (``teacher.checkpoint``) or train one with a margin head."""

    name = "teacher"
    produces = ("teacher", "teacher_scores")

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        s = config.teacher.model_dump()
        if config.teacher.checkpoint:
            s.pop("train")  # a pretrained teacher is not trained
            s["checkpoint"] = str(Path(config.teacher.checkpoint).resolve())
        return s

    def external_inputs(self, config: PipelineConfig) -> dict[str, str]:
        ckpt = config.teacher.checkpoint
        return {"checkpoint": sha256_file(ckpt)} if ckpt else {}

    def run(self, ctx: StageContext) -> StageResult:
        from teachers.registry import create_teacher
        from teachers.train import MarginTrainer

        cfg = ctx.config.teacher
        out = ctx.stage_dir / "teacher.pt"
        model = create_teacher(cfg.model, **cfg.args)
        if cfg.checkpoint:
            load_checkpoint_into(model, cfg.checkpoint)
            save_model(out, "teacher", cfg.model, cfg.args, None, checkpoint=cfg.checkpoint)
            metrics = {}
        else:
            from pipelines.training import fit

            train = cfg.train
            head = {k: v for k, v in train.head.model_dump().items() if v is not None}
            embedding = model(torch.zeros(2, 3, 112, 112)).shape[1]
            module = MarginTrainer(
                model,
                embedding,
                len(ctx.data.train_index.identities),
                head,
                train.optimizer,
                train.lr,
                train.weight_decay,
                train.warmup_epochs,
                train.schedule,
                train.momentum,
            )
            metrics = fit(
                module,
                ctx.data.train_dataset,
                train,
                ctx.data,
                ctx.stage_dir,
                ctx.run.metrics,
                ctx.config.pipeline.seed,
            )
            save_model(out, "teacher", cfg.model, cfg.args, model)
        model.eval()
        data = ctx.data
        scores = pair_scores(torch_embed_fn(model), data.eval_images, data.eval_pairs)
        labels = data.eval_pairs[:, 2]
        metrics = {
            **metrics,
            **verify_metrics(scores, labels, data.eval_name),
            "model.params": float(count_params(model)),
            "model.size_bytes": float(
                sum(t.numel() * t.element_size() for t in model.state_dict().values())
            ),
        }
        roc = _roc_artifact(ctx, {"teacher": roc_curve(scores, labels)[:2]})
        scores_path = ctx.stage_dir / "teacher_scores.npy"
        tmp = scores_path.with_name("teacher_scores.tmp.npy")
        np.save(tmp, scores)
        tmp.replace(scores_path)  # atomic: a killed run never leaves a truncated file
        return StageResult(
            {"teacher": out, "teacher_roc": roc, "teacher_scores": scores_path}, metrics
        )


class DistillStage(Stage):
    """Distil the frozen teacher's embeddings into a binarized student (Lightning, Brevitas)."""

    name = "distill"
    needs = ("teacher",)
    produces = ("student",)

    def run(self, ctx: StageContext) -> StageResult:
        from distill.module import EmbeddingDistiller, cached_teacher_embeddings
        from pipelines.training import fit
        from students.registry import create_student

        cfg = ctx.config.distill
        teacher, _ = load_model(ctx.inputs["teacher"])
        with torch.no_grad():
            embedding = teacher.eval()(torch.zeros(2, 3, 112, 112)).shape[1]
        args = dict(cfg.args)
        if args.setdefault("embedding_size", embedding) != embedding:
            raise ValueError(
                f"distill.args.embedding_size={args['embedding_size']} but the "
                f"teacher's embeddings have {embedding} dimensions"
            )
        student = create_student(cfg.student, **args)
        images = ctx.data.train_dataset.images
        if cfg.unlabelled:
            images = torch.cat([images, ctx.data.unlabelled_images(cfg.unlabelled)])
        dataset = TensorDataset(images, torch.arange(len(images)))
        cached = None
        if cfg.cache_teacher:
            cached = cached_teacher_embeddings(
                teacher,
                images,
                ctx.stage_dir / "teacher_embeddings.pt",
                sha256_file(ctx.inputs["teacher"]),
            )
        module = EmbeddingDistiller(
            student, teacher, cfg.losses, cfg.train.lr, cfg.train.weight_decay, cached
        )
        metrics = fit(
            module,
            dataset,
            cfg.train,
            ctx.data,
            ctx.stage_dir,
            ctx.run.metrics,
            ctx.config.pipeline.seed,
        )
        out = save_model(ctx.stage_dir / "student.pt", "student", cfg.student, args, student)
        metrics["model.params"] = float(count_params(student))
        metrics["train.images"] = float(len(dataset))
        return StageResult({"student": out}, metrics)


class ExportStage(Stage):
    """PyTorch -> QONNX -> lowered ONNX -> TF -> LCE TFLite (+ the float twin), with parity."""

    name = "export"
    needs = ("student",)
    produces = ("onnx", "lce_tflite", "float_tflite", "export_report")

    def run(self, ctx: StageContext) -> StageResult:
        from export.student_export import export_student

        cfg = ctx.config.export
        student, _ = load_model(ctx.inputs["student"])
        twin, _ = load_model(ctx.inputs["student"], binary=False)
        probe = ctx.data.probe_batch(cfg.probe_images)
        result = export_student(
            student, twin, probe, ctx.stage_dir, cfg.converter, cfg.allow_partial
        )
        outputs = {
            "onnx": Path(result.onnx),
            "lce_tflite": Path(result.lce_tflite),
            "float_tflite": Path(result.float_tflite),
            "export_report": Path(result.report),
            "float_onnx": Path(result.float_onnx),
        }
        return StageResult(outputs, result.metrics)


class EvaluateStage(Stage):
    """Accuracy of the exported LCE model and its speed beside the float twin and teacher."""

    name = "evaluate"
    needs = ("teacher", "teacher_scores", "lce_tflite", "float_tflite")
    produces = ("evaluation",)

    def run(self, ctx: StageContext) -> StageResult:
        from export.onnx_export import export_float_onnx, save_onnx
        from export.runtime import TFLiteRunner, measure_latency, onnxruntime_latency

        cfg = ctx.config.evaluate
        lce_fb = ctx.inputs["lce_tflite"].read_bytes()
        float_fb = ctx.inputs["float_tflite"].read_bytes()
        lce = TFLiteRunner(lce_fb, threads=cfg.threads, binary=True)
        timing = {
            "threads": cfg.threads,
            "runs": cfg.runs,
            "warmup": cfg.warmup,
            "instances": cfg.instances,
        }
        lce_speed = measure_latency(lce_fb, binary=True, **timing)
        float_speed = measure_latency(float_fb, binary=False, **timing)

        teacher, _ = load_model(ctx.inputs["teacher"])
        teacher_onnx = save_onnx(export_float_onnx(teacher), ctx.stage_dir / "teacher.onnx")
        teacher_speed = onnxruntime_latency(
            teacher_onnx, threads=cfg.threads, runs=cfg.runs, warmup=cfg.warmup
        )["latency_ms_p50"]

        data = ctx.data
        labels = data.eval_pairs[:, 2]
        scores = pair_scores(lce.embed, data.eval_images, data.eval_pairs)
        verify = verify_metrics(scores, labels, data.eval_name)
        t_scores = np.load(ctx.inputs["teacher_scores"])
        roc = _roc_artifact(
            ctx,
            {
                "student (LCE)": roc_curve(scores, labels)[:2],
                "teacher": roc_curve(t_scores, labels)[:2],
            },
        )
        metrics = {
            **verify,
            "bench.latency_ms_p50": lce_speed["latency_ms_p50"],
            "bench.latency_ms_p90": lce_speed["latency_ms_p90"],
            "bench.latency_ms_p50_min_instance": lce_speed["latency_ms_p50_min_instance"],
            "bench.latency_ms_p50_max_instance": lce_speed["latency_ms_p50_max_instance"],
            "bench.fps": lce_speed["fps"],
            "bench.float_latency_ms_p50": float_speed["latency_ms_p50"],
            "bench.float_fps": float_speed["fps"],
            "bench.speedup_vs_float": float_speed["latency_ms_p50"] / lce_speed["latency_ms_p50"],
            "bench.teacher_latency_ms_p50": teacher_speed,
            "bench.threads": float(cfg.threads),
            "model.size_bytes": float(len(lce_fb)),
            "model.float_size_bytes": float(len(float_fb)),
            "model.teacher_onnx_bytes": float(teacher_onnx.stat().st_size),
        }
        out = ctx.stage_dir / "evaluation.json"
        atomic_write_json(
            out,
            {
                "metrics": metrics,
                "runtime": {
                    "student": "LCE interpreter, indirect BGEMM",
                    "float_twin": "TFLite + XNNPACK",
                    "teacher": "ONNX Runtime",
                },
            },
        )
        return StageResult({"evaluation": out, "roc": roc, "teacher_onnx": teacher_onnx}, metrics)


STAGES: dict[str, Stage] = {
    s.name: s for s in (TeacherStage(), DistillStage(), ExportStage(), EvaluateStage())
}


def stage_summary(path: Path) -> dict[str, Any]:
    """A stage record (``stage.json``) as a dict."""
    return json.loads(path.read_text())
