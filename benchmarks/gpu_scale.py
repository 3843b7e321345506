"""Distillation at batch 512 on a GPU: images/s per student and precision, the loader's share.

Prepared for a machine with a GPU (one command, about 4-8 minutes on an H200 with 16 CPU
cores); it runs on the CPU too (``--quick``: tiny sizes, a smoke run). In one process:

0. **Data.** ``--unique`` synthetic 112x112 faces (:mod:`faces.synthetic`, 20 per person),
   repeated under new labels up to ``--faces`` images, packed with the project's RecordIO
   writer (an InsightFace set); the teacher's distillation targets of every image (and its
   mirror) built once by :func:`distill.targets.build_target_map` from a MobileFaceNet
   teacher with random weights (throughput does not depend on the weights). Kept in
   ``--work`` and reused by a later run with the same sizes.
1. **Distillation throughput.** The project's training step (``distill.module.Distiller``:
   cosine loss to the cached targets, ``students.schedules.bnn_optimizer``, gradient clip 5)
   driven by a Lightning ``Trainer`` set up as ``pipelines.training.fit.fit`` sets it up
   (precision ``bf16-mixed`` / ``16-mixed`` with its GradScaler / ``32-true``, no checkpoints,
   no verification) for ``--warmup`` + ``--steps`` steps, per student and precision; images
   read by the worker loader (``pipelines.training.loading.make_loader``: ``TrainingFaces`` over the
   RecordIO stream, all CPUs but one as workers, pinned memory; on a GPU shifts and jitter
   run on the batch in the step, as ``data.augment_on: auto`` does). images/s and the median
   step after the warm-up steps.
2. **The loader's share of a step.** Beside each run above, the same steps on batches
   already on the device (a few real batches, cycled): the step's compute alone. ``loader
   share`` = 1 - (images/s fed by the loader) / (images/s from device batches): the part of a
   step the loader adds. ``fetch %``: host time blocked waiting for the next batch
   (``next()`` on the loader) over the run's time (on a GPU it may overlap queued kernels).
   And the loader alone: batches/s of decode + mirror (+ augment on the CPU) + copy to the
   device, no training.
3. **DALI vs the worker loader** (only when ``import nvidia.dali`` works): the DALI loader
   alone (:class:`faces.dali_loader.DaliFaces`, nvJPEG on a GPU) vs the worker loader alone,
   and one student trained from each with the teacher online (DALI gives no image positions
   for cached targets), alternating.

Configurations are compared in alternating rounds (``--rounds``), medians reported.

    .venv/bin/python benchmarks/gpu_scale.py [--device auto|cuda|cpu] [--faces 20000]
        [--batch 512] [--students birealface quicknet_small] [--precisions bf16 fp16 fp32]
        [--steps 60] [--warmup 15] [--rounds 2] [--work runs/gpu_scale]
        [--json benchmarks/results/gpu_scale.json] [--quick]

``--quick`` (a CPU smoke run, < 2 min on 2 cores): 160 faces, batch 16, 6 + 2 steps, one
round; fp16 is skipped on the CPU (Lightning's ``16-mixed`` needs a GPU), bf16 runs under CPU
autocast. Prints one table (configuration, images/s, step ms, fetch %, loader share) and
writes the JSON (machine, settings, rows) after every row, so a run cut short keeps what it
measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PER_PERSON = 20
TEACHER = "mobilefacenet"
PRECISIONS = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}
GRAD_CLIP = 5.0  # TrainConfig.grad_clip's default


# -- data --------------------------------------------------------------------------------------
def make_recordio(work: Path, faces: int, unique: int) -> tuple[Path, dict[str, float]]:
    """``faces`` images in an InsightFace RecordIO set: ``unique`` rendered, repeated."""
    from faces.data import scan_image_folder
    from faces.recordio import write_recordio
    from faces.synthetic import write_synthetic_faces

    people = max(2, min(unique, faces) // PER_PERSON)
    rec = work / f"rec_{faces}_{people}x{PER_PERSON}"
    if (rec / "property").exists():
        return rec, {"recordio_reused": True}
    start = time.perf_counter()
    folder = work / f"faces_{people}x{PER_PERSON}"
    if not (folder / "README.txt").exists():
        write_synthetic_faces(folder, people, PER_PERSON, seed=0)
    rendered = time.perf_counter() - start
    index = scan_image_folder(folder, cache=False)
    raw = [(p.read_bytes(), int(label)) for p, label in zip(index.paths, index.labels, strict=True)]

    def repeated() -> Any:
        for k in range(faces):
            data, label = raw[k % len(raw)]
            yield data, label + (k // len(raw)) * people

    write_recordio(rec, repeated())
    return rec, {"render_s": rendered, "write_s": time.perf_counter() - start - rendered}


def make_targets(work: Path, rec: Path, device: str, workers: int) -> tuple[Any, dict]:
    """The cached targets of every face of ``rec`` (a random-weight teacher), built once."""
    from distill.targets import build_target_map
    from faces.recordio import RecordIOFaces
    from faces.streaming import RecordIOSource, TrainingFaces
    from teachers.registry import create_teacher

    labels = RecordIOFaces(rec).labels
    n = len(labels)
    torch.manual_seed(0)
    teacher = create_teacher(TEACHER)
    with torch.no_grad():
        dim = int(teacher.eval()(torch.zeros(2, 3, 112, 112)).shape[1])
    images = TrainingFaces(RecordIOSource(rec, np.arange(n)), labels, augment="none")
    folder = work / f"targets_{rec.name}"
    reused = (folder / "targets.json").is_file()
    start = time.perf_counter()
    targets = build_target_map(
        folder,
        f"{TEACHER}-seed0:{rec.name}",
        teacher,
        images,
        dim,
        batch_size=512,
        num_workers=workers,
        device=device,
        log=lambda m: None,
    )
    seconds = time.perf_counter() - start
    if reused:  # made by an earlier run (finished there, or continued here)
        return targets, {"targets_reused": True, "dim": dim}
    return targets, {"targets_s": seconds, "targets_images_per_s": n / seconds, "dim": dim}


class LongSampler:
    """``epochs`` shuffled epochs of :class:`faces.streaming.EpochSampler` in one pass: the
    loader never restarts (a real epoch of MS1M is 10,000 steps; a restart every 39 steps
    of this small set would stall the workers more often than training does)."""

    def __init__(self, n: int, batch_size: int, epochs: int) -> None:
        from faces.streaming import EpochSampler

        self.base = EpochSampler(n, batch_size, seed=0)
        self.n, self.batch_size, self.epochs = n, batch_size, epochs

    def __len__(self) -> int:
        return self.n * self.epochs

    def __iter__(self) -> Any:
        for epoch in range(self.epochs):
            for i in self.base.shard(epoch).tolist():
                yield epoch, i


class Batches:
    """``count`` batches of ``source`` (a loader restarted when it ends, or a list cycled);
    ``fetch_s`` holds the time each ``next()`` on ``source`` blocked."""

    def __init__(self, source: Any, count: int) -> None:
        self.source, self.count = source, count
        self.fetch_s: list[float] = []

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        self.fetch_s = []
        while len(self.fetch_s) < self.count:
            got = 0
            it = iter(self.source)
            while len(self.fetch_s) < self.count:
                start = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                self.fetch_s.append(time.perf_counter() - start)
                got += 1
                yield batch
            if not got:
                raise RuntimeError("the batch source is empty")


def quiesce(source: Any) -> None:
    """Stop a torch loader's persistent workers. A loader left mid-epoch goes on decoding the
    batches it had queued (workers x prefetch factor of them), which would take CPUs from the
    next measurement; its next use starts fresh workers (within the warm-up steps)."""
    it = getattr(source, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
        source._iterator = None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _on(device: str, batch: Any) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


# -- training runs -----------------------------------------------------------------------------
def train_run(
    ctx: dict[str, Any],
    student_name: str,
    precision: str,
    source: Any,
    online: bool = False,
    batch_augment: bool | None = None,
) -> dict[str, float]:
    """``warmup + steps`` Lightning steps of the Distiller fed by ``source``; figures after
    the warm-up."""
    import pytorch_lightning as pl

    from distill.module import Distiller
    from students.registry import create_student
    from teachers.registry import create_teacher

    device, warmup, steps = ctx["device"], ctx["warmup"], ctx["steps"]
    starts: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            starts.append(time.perf_counter())

    torch.manual_seed(0)
    student = create_student(student_name, embedding_size=ctx["dim"])
    teacher = create_teacher(TEACHER) if online else None
    module = Distiller(
        student,
        teacher,
        {"cosine": 1.0},
        cached=None if online else ctx["targets"],
        batch_augment=ctx["batch_augment"] if batch_augment is None else batch_augment,
    )
    batches = Batches(source, warmup + steps + 1)
    trainer = pl.Trainer(
        max_epochs=1,
        max_steps=warmup + steps + 1,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=PRECISIONS[precision],
        gradient_clip_val=GRAD_CLIP,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        callbacks=[Timer()],
        num_sanity_val_steps=0,
        default_root_dir=str(ctx["work"] / "lightning"),
        use_distributed_sampler=False,
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, batches)
    _sync(device)
    quiesce(source)
    if len(starts) < warmup + steps + 1:
        raise RuntimeError(f"only {len(starts)} steps ran of {warmup + steps + 1}")
    window = starts[warmup:]
    seconds = window[-1] - window[0]
    intervals = np.diff(window)
    out = {
        "images_per_s": ctx["batch"] * steps / seconds,
        "step_ms": 1000 * float(np.median(intervals)),
        "fetch_share": float(sum(batches.fetch_s[warmup + 1 : warmup + steps + 1]) / seconds),
        "fetch_ms": 1000 * float(np.median(batches.fetch_s[warmup + 1 :])),
    }
    if device == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def loader_run(source: Any, batches: int, warmup: int, batch: int, device: str) -> float:
    """Images/s of ``source`` alone: batches fetched and copied to ``device``, no training."""
    it = iter(Batches(source, warmup + batches))
    for _ in range(warmup):
        _on(device, next(it))
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        _on(device, next(it))
    _sync(device)
    seconds = time.perf_counter() - start
    quiesce(source)
    return batch * batches / seconds


def device_batches(loader: Any, device: str, k: int = 4) -> list[tuple[torch.Tensor, ...]]:
    """``k`` real batches of ``loader``, already on ``device``."""
    it = iter(loader)
    out = [_on(device, next(it)) for _ in range(k)]
    _sync(device)
    quiesce(loader)
    return out


# -- report ------------------------------------------------------------------------------------
def machine(device: str, workers: int) -> dict[str, Any]:
    import pytorch_lightning as pl

    from faces.dali_loader import dali_available

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "device": device,
        "cpus": len(os.sched_getaffinity(0)),
        "loader_workers": workers,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        info["cpu"] = cpu
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    if dali_available():
        import nvidia.dali

        info["dali"] = nvidia.dali.__version__
    return info


def _median_row(rounds: list[dict[str, float]]) -> dict[str, float]:
    keys = rounds[0].keys()
    return {k: float(np.median([r[k] for r in rounds])) for k in keys}


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{'configuration':<44} {'images/s':>9} {'step ms':>8} {'fetch %':>8} "
        f"{'loader share':>13}"
    )
    for row in report["rows"]:
        fetch = f"{100 * row['fetch_share']:.0f}" if "fetch_share" in row else ""
        share = f"{100 * row['loader_share']:.0f} %" if "loader_share" in row else ""
        step = f"{row['step_ms']:.1f}" if "step_ms" in row else ""
        print(f"{row['config']:<44} {row['images_per_s']:>9,.0f} {step:>8} {fetch:>8} {share:>13}")
    for line in report["skipped"]:
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--faces", type=int, default=None, help="20000 (GPU), 2000 (CPU)")
    parser.add_argument("--unique", type=int, default=2000, help="faces rendered, then repeated")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--students", nargs="+", default=["birealface", "quicknet_small"])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, default=60, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=15, help="steps before measuring")
    parser.add_argument("--loader-batches", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=420, help="no new round after this")
    parser.add_argument("--parts", default="123", help="which of the parts 1-3 to run")
    parser.add_argument("--work", default="runs/gpu_scale")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="a CPU smoke run: tiny sizes")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU")
    if args.quick:
        args.faces = args.faces or 160
        args.unique, args.batch = min(args.unique, 160), 16
        args.steps, args.warmup, args.loader_batches, args.rounds = 6, 2, 8, 1
    faces_n = args.faces or (20_000 if device == "cuda" else 2000)
    precisions = [p for p in args.precisions if p in PRECISIONS]
    skipped: list[str] = []
    if device == "cpu" and "fp16" in precisions:
        precisions.remove("fp16")
        skipped.append("skipped: fp16 on the CPU (Lightning's 16-mixed needs a GPU)")

    import students  # noqa: F401  (registers the students)
    import teachers  # noqa: F401
    from faces.dali_loader import DaliFaces, dali_available
    from faces.recordio import RecordIOFaces
    from faces.streaming import RecordIOSource, TrainingFaces
    from pipelines.training.fit import available_cpus
    from pipelines.training.loading import make_loader, training_threads

    # after importing Lightning, which sets its loggers to INFO
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is not a PyTorch Lightning.*")
    warnings.filterwarnings("ignore", ".*Total length of.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # the online teacher
    warnings.filterwarnings("ignore", ".*TensorCores.*|.*Tensor Cores.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")  # Lightning's, under newer torch

    cpus = available_cpus()
    workers = max(0, cpus - 1)  # data.num_workers: auto on a streamed set
    torch.set_num_threads(training_threads(cpus, workers))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine(device, workers),
        "settings": {
            "faces": faces_n,
            "unique_faces": min(args.unique, faces_n),
            "batch": args.batch,
            "students": args.students,
            "precisions": precisions,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "teacher": TEACHER,
            "loss": "cosine to cached teacher targets",
            "quick": args.quick,
        },
        "rows": [],
        "skipped": skipped,
    }

    def save() -> None:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")

    print(f"{json.dumps(report['machine'])}", flush=True)
    print(f"0. data: {faces_n:,} faces in RecordIO, cached {TEACHER} targets ...", flush=True)
    rec, data_times = make_recordio(work, faces_n, args.unique)
    targets, target_times = make_targets(work, rec, device, workers)
    report["data"] = {"recordio": str(rec), **data_times, **target_times}
    print(f"   {json.dumps(report['data'])}", flush=True)
    save()

    reader = RecordIOFaces(rec)
    labels = reader.labels
    n = len(labels)
    batch_augment = device == "cuda"  # data.augment_on: auto
    faces = TrainingFaces(
        RecordIOSource(rec, np.arange(n)), labels, augment="batch" if batch_augment else "sample"
    )
    per_run = args.warmup + max(args.steps, args.loader_batches) + 8
    epochs = -(-per_run * args.batch // n) + 1
    loader = make_loader(faces, LongSampler(n, args.batch, epochs), args.batch, workers)
    ctx = {
        "device": device,
        "warmup": args.warmup,
        "steps": args.steps,
        "batch": args.batch,
        "dim": target_times["dim"],
        "targets": targets,
        "batch_augment": batch_augment,
        "work": work,
    }
    dali = None
    if "3" in args.parts:
        if dali_available():
            dali = DaliFaces(
                rec,
                reader.keys,
                labels,
                labels,
                args.batch,
                work / "dali_index",
                device="gpu" if device == "cuda" else "cpu",
                threads=max(1, cpus - 1),
            )
        else:
            skipped.append("skipped: NVIDIA DALI not installed")

    pool = f"workers ({workers})"
    rounds: dict[str, list[dict[str, float]]] = {}
    meta: dict[str, dict[str, Any]] = {}

    def record(key: str, figures: dict[str, float], **info: Any) -> None:
        rounds.setdefault(key, []).append(figures)
        meta[key] = info
        line = ", ".join(
            f"{k} {v:,.0f}" if v >= 100 else f"{k} {v:.3g}" for k, v in figures.items()
        )
        print(f"   {key}: {line}  [{time.perf_counter() - began:.0f} s]", flush=True)
        report["rows"] = rows_of(rounds, meta)
        save()

    round_s: list[float] = []
    for r in range(args.rounds):
        elapsed = time.perf_counter() - began
        if r and elapsed + max(round_s) > args.budget_s:
            skipped.append(f"skipped: rounds {r + 1}..{args.rounds} (--budget-s {args.budget_s})")
            break
        start = time.perf_counter()
        print(f"round {r + 1} of {args.rounds}", flush=True)
        if "2" in args.parts:
            rate = loader_run(loader, args.loader_batches, args.warmup, args.batch, device)
            record(f"loader alone, {pool}", {"images_per_s": rate}, feed="workers")
            if dali is not None:
                rate = loader_run(dali, args.loader_batches, args.warmup, args.batch, device)
                record(f"loader alone, DALI ({dali.device})", {"images_per_s": rate}, feed="dali")
        if "1" in args.parts:
            on_device = device_batches(loader, device) if "2" in args.parts else []
            for student in args.students:
                for precision in precisions:
                    key = f"{student} {precision}, {pool}"
                    figures = train_run(ctx, student, precision, loader)
                    record(key, figures, student=student, precision=precision, feed="workers")
                    if on_device:
                        figures = train_run(ctx, student, precision, on_device)
                        key = f"{student} {precision}, device batches"
                        record(key, figures, student=student, precision=precision, feed="device")
            del on_device
        if dali is not None:
            student, precision = args.students[0], precisions[0]
            for feed, source in ((pool, loader), (f"DALI ({dali.device})", dali)):
                figures = train_run(
                    ctx, student, precision, source, online=True, batch_augment=True
                )
                key = f"{student} {precision}, online teacher, {feed}"
                record(
                    key,
                    figures,
                    student=student,
                    precision=precision,
                    feed="dali" if source is dali else "workers",
                    targets="online",
                )
        round_s.append(time.perf_counter() - start)

    report["seconds"] = time.perf_counter() - began
    save()
    print_table(report)
    return 0


def rows_of(rounds: dict[str, list[dict]], meta: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per configuration: medians over the rounds; a loader-fed row gets its loader
    share against the same student and precision on device batches."""
    rows = []
    for key, runs in rounds.items():
        row = {"config": key, **meta[key], **_median_row(runs), "rounds": runs}
        row.setdefault("targets", "cached" if "student" in row else None)
        rows.append(row)
    by = {(r.get("student"), r.get("precision"), r["feed"], r["targets"]): r for r in rows}
    for row in rows:
        if row["feed"] == "workers" and "student" in row and row["targets"] == "cached":
            compute = by.get((row["student"], row["precision"], "device", "cached"))
            if compute:
                row["loader_share"] = max(0.0, 1 - row["images_per_s"] / compute["images_per_s"])
    return rows


if __name__ == "__main__":
    sys.exit(main())
