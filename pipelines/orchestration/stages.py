"""The stages: what each needs, what it produces, and how it runs.

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

from faces.data import FaceDataError
from faces.evaluate import EmbedFn, set_scores, sets_metrics, torch_embed_fn
from faces.verification import roc_curve, save_roc_plot
from pipelines.core.artifacts import atomic_write_json, load_model, save_model
from pipelines.core.config import ConfigError, PipelineConfig
from pipelines.evaluation.references import REFERENCES
from pipelines.tracking.runs import StageRun
from pipelines.training.data import DataContext
from privacy.judges import DLIB as DLIB_JUDGE
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

    def inputs_needed(self, config: PipelineConfig) -> tuple[str, ...]:
        """The artifacts of earlier stages this stage takes, for this configuration."""
        return self.needs

    @abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Do the stage's work in ``ctx.stage_dir``; return its artifacts and metrics."""


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _roc_artifact(ctx: StageContext, curves: dict[str, Any], name: str = "roc.png") -> Path:
    path = ctx.stage_dir / name
    save_roc_plot(curves, path, title=f"ROC on {', '.join(ctx.data.eval_names)}")
    return path


def _score_sets(
    embed_fn: EmbedFn, data: DataContext
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Pair scores of every evaluation set (each image embedded once) and their metrics:
    ``verify.<set>.*``, ``verify.mean.acc`` and the fixed-FAR accuracies if configured."""
    scores = set_scores(embed_fn, data.eval_sets)
    return scores, sets_metrics(scores, data.eval_sets, data.far_threshold)


def _roc_curves(label: str, scores: dict[str, np.ndarray], data: DataContext) -> dict[str, Any]:
    """ROC curves of one model, one per set (the label alone with a single set)."""
    several = len(data.eval_sets) > 1
    return {
        f"{label} {s.name}" if several else label: roc_curve(scores[s.name], s.pairs[:, 2])[:2]
        for s in data.eval_sets
        if s.name in scores and len(scores[s.name]) == len(s.pairs)
    }


def _save_scores(path: Path, scores: dict[str, np.ndarray]) -> Path:
    """Pair scores per set as one ``.npz``, written atomically."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **scores)
    tmp.replace(path)  # atomic: a killed run never leaves a truncated file
    return path


def _load_scores(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Scores saved by :func:`_save_scores`, or a single-set ``.npy`` of an earlier run."""
    loaded = np.load(path)
    if isinstance(loaded, np.ndarray):
        return {names[0]: loaded}
    return {k: loaded[k] for k in loaded.files}


class TeacherStage(Stage):
    """Load a pretrained teacher (``teacher.checkpoint``) or train one with a margin head."""

    name = "teacher"
    produces = ("teacher", "teacher_scores")

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        s = config.teacher.model_dump()
        _train_settings(s["train"])
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
        extra_outputs: dict[str, Path] = {}
        if cfg.checkpoint:
            load_checkpoint_into(model, cfg.checkpoint)
            save_model(out, "teacher", cfg.model, cfg.args, None, checkpoint=cfg.checkpoint)
            metrics = {}
        else:
            from pipelines.training.fit import fit

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
                batch_augment=ctx.data.augment_mode == "batch",
            )
            metrics = fit(
                module,
                ctx.data.training_faces(augment=ctx.data.augment_mode),
                train,
                ctx.data,
                ctx.stage_dir,
                ctx.run.metrics,
                ctx.config.pipeline.seed,
            )
            save_model(out, "teacher", cfg.model, cfg.args, model)
            head_path = ctx.stage_dir / "teacher_head.pt"
            tmp = head_path.with_name(head_path.name + ".tmp")
            torch.save(
                {
                    "weight": module.head.weight.detach().cpu().clone(),
                    "identities": list(ctx.data.train_index.identities),
                },
                tmp,
            )
            tmp.replace(head_path)
            extra_outputs["teacher_head"] = head_path  # its class centres, for distillation
        model.eval()
        scores, verify = _score_sets(torch_embed_fn(model), ctx.data)
        metrics = {
            **metrics,
            **verify,
            "model.params": float(count_params(model)),
            "model.size_bytes": float(
                sum(t.numel() * t.element_size() for t in model.state_dict().values())
            ),
        }
        roc = _roc_artifact(ctx, _roc_curves("teacher", scores, ctx.data))
        scores_path = _save_scores(ctx.stage_dir / "teacher_scores.npz", scores)
        return StageResult(
            {"teacher": out, "teacher_roc": roc, "teacher_scores": scores_path, **extra_outputs},
            metrics,
        )


# how fast, not what: switches that leave the result equal up to rounding stay out of the
# stage fingerprint, so turning them on or off reuses a cached stage
SPEED_KEYS = ("channels_last", "compile")


# training keys added after stages were cached: left out while unset, so that those caches
# stay valid
UNSET_KEYS = ("eval_every_steps",)


def _train_settings(train: dict[str, Any]) -> dict[str, Any]:
    for key in SPEED_KEYS:
        train.pop(key, None)
    for key in UNSET_KEYS:
        if train.get(key) is None:
            train.pop(key, None)
    return train


def _distill_settings(config: PipelineConfig) -> dict[str, Any]:
    s = config.distill.model_dump()
    _train_settings(s["train"])
    return s


class DistillStage(Stage):
    """Train the binarized student (Lightning, Brevitas) with the weighted ``distill.losses``.

    From the frozen teacher's embeddings (cached once per dataset), from the identity labels
    of the training images, or both. Unlabelled images (``distill.unlabelled``, label -1) join
    the batches only when some loss is label-free. Without a loss that uses the teacher the
    student trains alone (method ``none``): the teacher artifact then only gives the default
    embedding size. ``distill.init`` starts it from the float twin's or the teacher's weights;
    ``distill.control: twin`` logs the twin's accuracy beside its own and the cost of
    binarization on every set.
    """

    name = "distill"
    needs = ("teacher",)
    produces = ("student",)

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        s = _distill_settings(config)
        for key in ("control", "init"):  # unset: the fingerprints of earlier runs stay valid
            if s[key] is None:
                del s[key]
        return s

    def inputs_needed(self, config: PipelineConfig) -> tuple[str, ...]:
        return ("teacher", "twin", "twin_metrics") if config.distill.uses_twin() else self.needs

    def run(self, ctx: StageContext) -> StageResult:
        cfg = ctx.config.distill
        twin_state = None
        if cfg.init == "twin":
            twin_state = torch.load(ctx.inputs["twin"], map_location="cpu", weights_only=True)
            twin_state = twin_state["state_dict"]
        student, args, metrics, curve = _train_student(ctx, binary=True, twin_state=twin_state)
        out = save_model(ctx.stage_dir / "student.pt", "student", cfg.student, args, student)
        outputs: dict[str, Path] = {"student": out}
        if cfg.control == "twin":
            twin = json.loads(Path(ctx.inputs["twin_metrics"]).read_text())
            metrics.update(binarization_cost(metrics, twin["metrics"], ctx.data.eval_names))
            curves = {"1-bit student": curve, "float twin": twin["curve"]}
        else:
            curves = {"1-bit student": curve}
        outputs["learning_curve"] = _learning_curve_png(ctx, curves)
        return StageResult(outputs, metrics)


class TwinStage(DistillStage):
    """The float twin of the student (``binary: false``: same layers, hardtanh for sign, float
    weights), trained with the student's recipe, data and budget; the control that separates
    the cost of binarization from the cost of the budget (``distill.control`` / ``init``)."""

    name = "twin"
    needs = ("teacher",)
    produces = ("twin", "twin_metrics")

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        s = _distill_settings(config)
        del s["control"]
        s["init"] = "teacher" if s["init"] == "teacher" else None  # the twin of that start
        if s["init"] is None:
            del s["init"]
        s["args"] = {**s["args"], "binary": False}
        return s

    def inputs_needed(self, config: PipelineConfig) -> tuple[str, ...]:
        return self.needs

    def run(self, ctx: StageContext) -> StageResult:
        cfg = ctx.config.distill
        twin, args, metrics, curve = _train_student(ctx, binary=False)
        out = save_model(ctx.stage_dir / "twin.pt", "student", cfg.student, args, twin)
        summary = ctx.stage_dir / "twin_metrics.json"
        atomic_write_json(summary, {"metrics": metrics, "curve": curve})
        png = _learning_curve_png(ctx, {"float twin": curve})
        return StageResult({"twin": out, "twin_metrics": summary, "learning_curve": png}, metrics)


def binarization_cost(
    student: dict[str, float], twin: dict[str, float], set_names: list[str]
) -> dict[str, float]:
    """``twin.verify.<set>.acc`` (and its std), ``distill.binarization_cost.<set>`` = twin
    minus student accuracy, and ``distill.binarization_cost`` over the sets' mean."""
    out: dict[str, float] = {}
    names = [*set_names, "mean"] if len(set_names) > 1 else list(set_names)
    for name in names:
        key = f"verify.{name}.acc"
        if key in twin:
            out[f"twin.{key}"] = twin[key]
            if f"verify.{name}.acc_std" in twin:
                out[f"twin.verify.{name}.acc_std"] = twin[f"verify.{name}.acc_std"]
        if key in twin and key in student:
            out[f"distill.binarization_cost.{name}"] = twin[key] - student[key]
    main = "mean" if len(set_names) > 1 else set_names[0]
    if f"distill.binarization_cost.{main}" in out:
        out["distill.binarization_cost"] = out[f"distill.binarization_cost.{main}"]
    return out


def _learning_curve_png(ctx: StageContext, curves: dict[str, Any]) -> Path:
    """The stage's learning curve(s): ``learning_curve.json`` beside ``learning_curve.png``."""
    from pipelines.evaluation.learning_curve import plot_curves

    atomic_write_json(ctx.stage_dir / "learning_curve.json", curves)
    title = f"{ctx.config.distill.student}: held-out accuracy against images seen"
    return plot_curves(curves, ctx.data.eval_names, ctx.stage_dir / "learning_curve.png", title)


def _train_student(
    ctx: StageContext, binary: bool, twin_state: dict[str, torch.Tensor] | None = None
) -> tuple[nn.Module, dict[str, Any], dict[str, float], list[dict[str, float]]]:
    """Build and train the student (``binary``) or its float twin with ``distill.*``; returns
    the model, the arguments it was built with, the stage's metrics and its learning curve."""
    from distill.acceleration import resolve_compile
    from distill.features import FeatureLayerError
    from distill.losses import (
        LossContext,
        label_free,
        uses_bank,
        uses_centres,
        uses_teacher,
    )
    from distill.module import Distiller, class_centres_of_map
    from pipelines.evaluation.learning_curve import read_curve
    from pipelines.training.fit import CURVE_FILE, fit
    from students.registry import create_student

    cfg = ctx.config.distill
    teacher, _ = load_model(ctx.inputs["teacher"])
    with torch.no_grad():
        embedding = teacher.eval()(torch.zeros(2, 3, 112, 112)).shape[1]
    args = dict(cfg.args)
    if args.setdefault("embedding_size", embedding) != embedding and uses_teacher(cfg.losses):
        raise ValueError(
            f"distill.args.embedding_size={args['embedding_size']} but the "
            f"teacher's embeddings have {embedding} dimensions"
        )
    if not binary:
        args["binary"] = False
    student = create_student(cfg.student, **args)
    if cfg.init == "teacher":
        _init_from_teacher(student, teacher, cfg.student)
    elif twin_state is not None:
        _init_from_twin(student, twin_state)
    data = ctx.data
    n_labelled = len(data.train_source[1])
    num_classes = len(data.train_index.identities)
    unlabelled = cfg.unlabelled if label_free(cfg.losses) else []
    if cfg.unlabelled and not unlabelled:
        print("note: distill.unlabelled is not used: every loss needs labels")
    dataset = data.training_faces(unlabelled, augment=data.augment_mode)
    need_teacher = uses_teacher(cfg.losses)
    needs_map = need_teacher and (
        cfg.teacher_targets == "cached" or uses_centres(cfg.losses) or uses_bank(cfg.losses)
    )
    if data.cfg.loader == "dali" and need_teacher and cfg.teacher_targets == "cached":
        raise FaceDataError(
            "data.loader: dali gives no image positions for cached teacher targets; "
            "set distill.teacher_targets: online (the teacher runs in the training step)"
        )
    targets = _target_map(ctx, teacher, embedding) if needs_map else None
    context = LossContext(args["embedding_size"], num_classes)
    if uses_centres(cfg.losses):
        context.centres, context.spread = class_centres_of_map(
            targets, dataset.labels[:n_labelled], num_classes, _teacher_head(ctx)
        )
    if uses_bank(cfg.losses):
        context.bank = _bank(targets, len(dataset), ctx.config.pipeline.seed)
    try:  # feature losses check their layer names against both models here
        module = Distiller(
            student,
            teacher if need_teacher else None,
            cfg.losses,
            cfg.train.lr,
            cfg.train.weight_decay,
            targets if cfg.teacher_targets == "cached" else None,
            context,
            optimizer=getattr(cfg.train, "optimizer", "adam"),
            schedule=getattr(cfg.train, "schedule", "linear"),
            warmup_epochs=getattr(cfg.train, "warmup_epochs", 0.0),
            momentum=getattr(cfg.train, "momentum", 0.9),
            batch_augment=data.augment_mode == "batch",
            channels_last=cfg.train.channels_last,
            compile_student=resolve_compile(
                cfg.train.compile, _planned_steps(cfg.train, dataset), cfg.student
            ),
        )
    except FeatureLayerError as exc:
        raise ConfigError(str(exc)) from None
    share = cfg.train.labelled_share
    sampler = None
    if share is not None and len(dataset) > n_labelled:
        from faces.streaming import EpochSampler

        sampler = EpochSampler(
            len(dataset), cfg.train.batch_size, ctx.config.pipeline.seed, n_labelled, share
        )
    elif share is not None:
        print("note: distill.train.labelled_share is not used: no unlabelled faces in training")
    metrics = fit(
        module,
        dataset,
        cfg.train,
        data,
        ctx.stage_dir,
        ctx.run.metrics,
        ctx.config.pipeline.seed,
        sampler,
    )
    metrics["model.params"] = float(count_params(student))
    metrics["train.images"] = float(len(dataset))
    metrics["train.labelled_images"] = float(n_labelled)
    steps, world = _steps_and_world_size(module, ctx.stage_dir, cfg.train)
    metrics["train.steps"] = float(steps)
    metrics["train.images_seen"] = float(steps * cfg.train.batch_size * world)
    return student, args, metrics, read_curve(ctx.stage_dir / "checkpoints" / CURVE_FILE)


def _planned_steps(train: Any, dataset: Any) -> int:
    """Steps the distillation will take (one process): epochs of full batches, or max_steps."""
    steps = train.epochs * (len(dataset) // train.batch_size)
    return min(steps, train.max_steps) if train.max_steps else steps


def _init_from_twin(student: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """The distilled float twin's weights as the 1-bit student's latent weights."""
    own = student.state_dict()
    for key, value in own.items():
        if key not in state:
            raise ConfigError(
                f"distill.init: twin: the twin has no {key!r} (its layers: "
                f"{', '.join(list(state)[:8])}, ...)"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise ConfigError(
                f"distill.init: twin: {key!r} is {tuple(state[key].shape)} in the twin, "
                f"{tuple(value.shape)} in the student"
            )
    student.load_state_dict({k: state[k] for k in own})


def _init_from_teacher(student: nn.Module, teacher: nn.Module, name: str) -> None:
    """The teacher's weights as the student's latent weights (a student on its topology)."""
    import students

    init = getattr(students, "init_from_teacher", None)
    try:
        copied = init(student, teacher.state_dict()) if init else []
    except ValueError as exc:
        raise ConfigError(f"distill.init: teacher: {exc}") from None
    if not copied:
        raise ConfigError(
            f"distill.init: teacher: student {name!r} takes no weights from the teacher "
            f"{type(teacher).__name__} (a student on the teacher's topology does: "
            "mobilefacenet_1bit for mobilefacenet)"
        )


def _steps_and_world_size(module: Any, stage_dir: Path, train: Any) -> tuple[int, int]:
    """Optimiser steps taken and processes that took them (the training budget spent).

    After a DDP run launched by fork or spawn the main process's module is detached from
    its trainer: the last checkpoint holds the step count then.
    """
    try:
        return int(module.trainer.global_step), int(module.trainer.world_size)
    except RuntimeError:
        pass
    last = stage_dir / "checkpoints" / "last.ckpt"
    steps = 0
    if last.is_file():
        steps = int(
            torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    devices = str(train.devices)
    if "," in devices:  # a list of device ids
        world = len([d for d in devices.split(",") if d.strip()])
    else:
        world = int(devices) if devices.isdigit() else 1
    return steps, world * train.num_nodes


BANK_ROWS = 32768  # SEED's bank: every image (both views) up to this many, else a sample


def _target_map(ctx: StageContext, teacher: nn.Module, dim: int) -> Any:
    """The teacher's targets of every training image (labelled, then every configured
    unlabelled folder, used or not: ablation variants with and without them share one map),
    in ``teacher/targets/`` beside the teacher; built once, reused, rebuilt on a mismatch."""
    from distill.targets import build_target_map, wait_for_target_map
    from pipelines.training.fit import available_cpus, distributed_worker_rank
    from pipelines.training.loading import resolve_workers

    data = ctx.data
    unlabelled = ctx.config.distill.unlabelled
    images = data.training_faces(unlabelled, augment="none")
    data_key = data.training_key(unlabelled)
    folder = Path(ctx.inputs["teacher"]).parent / "targets" / data_key[:16]
    key = f"{sha256_file(ctx.inputs['teacher'])}:{data_key}"
    if distributed_worker_rank() > 0:  # rank 0 builds it
        return wait_for_target_map(folder, key, len(images), dim)
    workers = resolve_workers(data.cfg.num_workers, available_cpus(), images.in_memory)
    return build_target_map(folder, key, teacher, images, dim, num_workers=workers)


def _bank(targets: Any, n: int, seed: int) -> torch.Tensor:
    """SEED's bank: the targets of the first ``n`` rows (both views), or a sample of them."""
    if n <= BANK_ROWS:
        return targets.rows(0, n)
    return targets.sample(BANK_ROWS, seed, limit=n)


def _teacher_head(ctx: StageContext) -> torch.Tensor | None:
    """The trained teacher's class centres, if it was trained here on the same identities."""
    path = ctx.inputs.get("teacher_head")
    if path is None or not Path(path).is_file():
        return None
    head = torch.load(path, map_location="cpu", weights_only=True)
    if list(head.get("identities", [])) != list(ctx.data.train_index.identities):
        return None  # other people: the class means of the teacher's embeddings serve
    return head["weight"]


def _save_calibration_faces(ctx: StageContext, count: int = 100) -> Path:
    """Training faces (uint8 NHWC, evenly spaced) for ``facekd bench``'s int8 calibration."""
    from export.bench_rows import CALIBRATION_FILE

    faces = ctx.data.calibration_faces(count)
    path = ctx.stage_dir / CALIBRATION_FILE
    tmp = path.with_name("calibration_faces.tmp.npy")
    np.save(tmp, faces)
    tmp.replace(path)
    return path


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
        _save_calibration_faces(ctx)
        outputs = {
            "onnx": Path(result.onnx),
            "lce_tflite": Path(result.lce_tflite),
            "float_tflite": Path(result.float_tflite),
            "export_report": Path(result.report),
            "export_report_md": Path(result.report_md),
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
        from export.runtime import TFLiteRunner, measure_latencies, onnxruntime_latency

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
        references = _reference_flatbuffers(ctx) if cfg.teacher_tflite else {}
        speeds = measure_latencies(  # in turns: the speedup compares like with like
            {
                "lce": (lce_fb, {"binary": True}),
                "float": (float_fb, {"binary": False}),
                **{name: (fb, {"binary": False}) for name, fb in references.items()},
            },
            **timing,
        )
        lce_speed, float_speed = speeds["lce"], speeds["float"]

        teacher, _ = load_model(ctx.inputs["teacher"])
        teacher_onnx = save_onnx(export_float_onnx(teacher), ctx.stage_dir / "teacher.onnx")
        teacher_speed = onnxruntime_latency(
            teacher_onnx, threads=cfg.threads, runs=cfg.runs, warmup=cfg.warmup
        )["latency_ms_p50"]

        data = ctx.data
        scores, verify = _score_sets(lce.embed, data)
        t_scores = _load_scores(ctx.inputs["teacher_scores"], data.eval_names)
        curves = _roc_curves("student (LCE)", scores, data)
        roc = _roc_artifact(ctx, {**curves, **_roc_curves("teacher", t_scores, data)})
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
        outputs: dict[str, Path] = {}
        for name, fb in references.items():
            runner = TFLiteRunner(fb, threads=cfg.threads, binary=False)
            _, ref_verify = _score_sets(runner.embed, data)
            prefix = f"reference.{name}."
            metrics.update({prefix + k: v for k, v in ref_verify.items()})
            metrics[prefix + "bench.latency_ms_p50"] = speeds[name]["latency_ms_p50"]
            metrics[prefix + "bench.fps"] = speeds[name]["fps"]
            metrics[prefix + "model.size_bytes"] = float(len(fb))
            outputs[name] = ctx.stage_dir / f"{name}.tflite"
            outputs[name].write_bytes(fb)
        out = ctx.stage_dir / "evaluation.json"
        atomic_write_json(
            out,
            {
                "metrics": metrics,
                "runtime": {
                    "student": "LCE interpreter, indirect BGEMM",
                    "float_twin": "TFLite + XNNPACK",
                    "teacher": "ONNX Runtime",
                    **{name: REFERENCES[name] for name in references},
                },
            },
        )
        outputs.update({"evaluation": out, "roc": roc, "teacher_onnx": teacher_onnx})
        return StageResult(outputs, metrics)


def _reference_flatbuffers(ctx: StageContext) -> dict[str, bytes]:
    """The teacher as float and int8 TFLite (cached beside the teacher), calibrated on the
    training faces the export stage saved; {} with a warning when a conversion fails."""
    from export.bench_rows import load_calibration
    from pipelines.evaluation.references import teacher_references

    calibration = load_calibration(Path(ctx.inputs["lce_tflite"]).parent, None)
    if calibration is None:
        _save_calibration_faces(ctx)
        calibration = load_calibration(ctx.stage_dir, None)
    teacher = Path(ctx.inputs["teacher"])
    try:
        paths = teacher_references(
            teacher, sha256_file(teacher), calibration, ctx.config.export.converter
        )
    except Exception as exc:  # noqa: BLE001 - a converter failing on a teacher is not fatal
        print(f"warning: no teacher TFLite reference rows: the conversion failed: {exc}")
        return {}
    return {name: path.read_bytes() for name, path in paths.items()}


class PrivacyStage(Stage):
    """How much of a face leaks from the teacher, the float twin and the 1-bit student:
    template inversion and gradient leakage under one budget (``privacy``)."""

    name = "privacy"
    needs = ("teacher", "student")
    produces = ("privacy",)

    def settings(self, config: PipelineConfig) -> dict[str, Any]:
        s = config.privacy.model_dump()
        s["attacker"] = [str(Path(f).resolve()) for f in config.privacy.attacker]
        if s["targets"]:
            s["targets"] = str(Path(s["targets"]).resolve())
        if s["judge"] and s["judge"] != DLIB_JUDGE:
            s["judge"] = str(Path(s["judge"]).resolve())
        return s

    def external_inputs(self, config: PipelineConfig) -> dict[str, str]:
        from faces.data import folder_fingerprint

        cfg = config.privacy
        out = {f"attacker.{i}": folder_fingerprint(f) for i, f in enumerate(cfg.attacker)}
        if cfg.targets:
            out["targets"] = folder_fingerprint(cfg.targets)
        if cfg.judge == DLIB_JUDGE:
            from privacy.judges import dlib_fingerprint

            out["judge"] = dlib_fingerprint()
        elif cfg.judge:
            out["judge"] = sha256_file(cfg.judge)
        return out

    def run(self, ctx: StageContext) -> StageResult:
        from pipelines.orchestration.privacy_inputs import (
            attacker_faces,
            budget_of,
            load_judge,
            models_of,
            no_faces,
        )
        from privacy.analysis import analyse

        cfg = ctx.config.privacy
        models = models_of(ctx.inputs["teacher"], ctx.inputs["student"])
        targets = _privacy_targets(ctx)
        judge, about = load_judge(cfg, models["teacher"], targets, ctx.inputs["teacher"])
        print(f"[privacy] judge: {about}")
        if "inversion" not in cfg.attacks:
            attacker = no_faces()  # only the template inversion needs the attacker's faces
        elif cfg.attacker:
            attacker = attacker_faces(cfg.attacker, cfg.attacker_images, ctx.data.cfg.bad_images)
        else:  # the training people: disjoint from the evaluation people
            attacker = torch.from_numpy(
                ctx.data.calibration_faces(cfg.attacker_images).transpose(0, 3, 1, 2).copy()
            )
        result = analyse(
            models,
            judge,
            attacker,
            targets,
            budget_of(cfg, ctx.config.pipeline.seed),
            ctx.stage_dir,
            log=print,
        )
        outputs = {"privacy": ctx.stage_dir / "privacy.json"}
        outputs.update({f"privacy_{k}": path for k, path in result.grids.items()})
        return StageResult(outputs, {f"privacy.{k}": v for k, v in result.metrics.items()})


def _privacy_targets(ctx: StageContext) -> Any:
    """The attacked people: ``privacy.targets``, else the held-out evaluation people, else
    ``data.eval`` when it is one ImageFolder (a ``.bin`` or several sets have no one answer)."""
    from pipelines.orchestration.privacy_inputs import target_set
    from privacy.analysis import TargetSet

    cfg, data = ctx.config.privacy, ctx.data
    if cfg.targets:
        return target_set(cfg.targets, data.cfg.manifest)
    if not data.separate_eval:
        return TargetSet(*data.heldout_people())
    specs = data.eval_specs
    if len(specs) == 1 and Path(specs[0].path).is_dir():
        return target_set(specs[0].path, data.cfg.manifest)
    raise FaceDataError(
        "privacy.targets: name an ImageFolder of the attacked people (data.eval is "
        f"{', '.join(s.path for s in specs)}: not one ImageFolder with identity labels)"
    )


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        TeacherStage(),
        TwinStage(),
        DistillStage(),
        ExportStage(),
        EvaluateStage(),
        PrivacyStage(),
    )
}


def stage_summary(path: Path) -> dict[str, Any]:
    """A stage record (``stage.json``) as a dict."""
    return json.loads(path.read_text())
