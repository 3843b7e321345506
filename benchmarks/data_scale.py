"""Training data at scale: memory and start-up on 1 M faces, loader throughput, stream vs memory.

Writes ``--faces`` synthetic 112x112 faces (100 per person) and packs them with the project's
own RecordIO writer twice: once as they are (the small set) and ``--copies`` times under new
labels (the big set: 10,000 faces x 100 = 1,000,000 faces of 10,000 people). Then, each in a
process of its own, measured side by side in this one run:

1. **Memory and start-up.** A real pipeline (``teacher`` from a saved checkpoint, then
   ``distill`` for ``--steps`` steps, online teacher targets, the images streamed through the
   index: ``cache_in_memory: false``) on the big and on the small set: peak memory of the
   process tree (PSS, so pages shared with forked loader workers count once; and the main
   process's peak RSS), seconds from process start to the first training step, images/s.
2. **Loader throughput** on the big set with 0, 1, 2 worker processes (decode, mirror,
   augment, collate), beside one core's decode rate and decode+augment rate in-process.
3. **Stream vs memory.** Distillation steps (BiRealFace student, online teacher) fed by the
   RecordIO stream vs by the same faces decoded in memory, same worker count, alternating
   rounds: images/s and their ratio.
4. **bf16 vs fp32** training on the CPU (autocast; AMX / AVX-512-BF16 flags reported):
   images/s of both and verification accuracy after the same steps (ArcFace on the small
   set's people, held-out synthetic people as the evaluation set).

    .venv/bin/python benchmarks/data_scale.py [--faces 10000] [--copies 100] [--steps 200]
        [--work runs/data_scale] [--json benchmarks/results/data_scale.json]

The big set takes ~7 GB of disk (the synthetic JPEGs are ~7 KB each). Written files are kept
in ``--work`` and reused by a later run with the same sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PER_PERSON = 100
STUDENT = {"width": 32, "depths": [1, 1]}
EMBEDDING = 128


# -- data -------------------------------------------------------------------------------------
def make_sets(work: Path, faces: int, copies: int) -> dict[str, Path]:
    """The synthetic faces, the small and the big RecordIO set, and an evaluation folder."""
    from faces.data import scan_image_folder
    from faces.recordio import write_recordio
    from faces.synthetic import write_synthetic_faces

    people = faces // PER_PERSON
    folder = work / f"faces_{people}x{PER_PERSON}"
    if not (folder / "README.txt").exists():
        write_synthetic_faces(folder, people, PER_PERSON, seed=0)
    evaluation = work / "eval_faces"
    if not (evaluation / "README.txt").exists():
        write_synthetic_faces(evaluation, 40, 8, seed=99)
    index = scan_image_folder(folder, cache=False)
    raw = [(p.read_bytes(), int(label)) for p, label in zip(index.paths, index.labels, strict=True)]
    small = work / f"rec_{len(raw)}"
    if not (small / "property").exists():
        write_recordio(small, raw)
    big = work / f"rec_{len(raw) * copies}"
    if not (big / "property").exists():
        start = time.perf_counter()

        def repeated() -> Any:
            for c in range(copies):
                for data, label in raw:
                    yield data, label + c * people

        write_recordio(big, repeated())
        size = (big / "train.rec").stat().st_size / 2**30
        print(
            f"wrote {len(raw) * copies:,} faces ({size:.1f} GiB) in "
            f"{time.perf_counter() - start:.0f} s to {big}",
            flush=True,
        )
    return {"folder": folder, "small": small, "big": big, "eval": evaluation}


# -- 1. a real pipeline on each set, in a child process ------------------------------------------
class TreeMemory:
    """Peak PSS of this process and its children, and the main process's peak RSS."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak_pss = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(every,), daemon=True)
        self._thread.start()

    def _watch(self, every: float) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except (psutil.Error, OSError):
                    continue
            self.peak_pss = max(self.peak_pss, total)
            self.peak_rss = max(self.peak_rss, self.me.memory_info().rss)
            time.sleep(every)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_pss_mib": self.peak_pss / 2**20, "peak_rss_main_mib": self.peak_rss / 2**20}


def child_pipeline(data: Path, evaluation: Path, teacher: Path, out: Path, steps: int) -> dict:
    """Run teacher (from ``teacher``) + distill for ``steps`` steps; memory, start-up, speed."""
    import psutil

    import distill.module as module
    from pipelines.core.config import validate_raw
    from pipelines.orchestration.orchestrator import Orchestrator

    started = psutil.Process().create_time()
    memory = TreeMemory()
    steps_at: list[float] = []
    original = module.Distiller.training_step

    def timed(self: Any, batch: Any, batch_idx: int) -> Any:
        steps_at.append(time.time())
        return original(self, batch, batch_idx)

    module.Distiller.training_step = timed
    raw = {
        "pipeline": {"name": data.name, "output_dir": str(out), "experiment": "data-scale"},
        "stages": ["teacher", "distill"],
        "data": {
            "train": str(data),
            "eval": str(evaluation),
            "eval_pairs": 200,
            "cache_in_memory": False,
        },
        "teacher": {
            "model": "vit_face_micro",
            "args": {"embedding_size": EMBEDDING},
            "checkpoint": str(teacher),
        },
        "distill": {
            "student": "birealface",
            "args": STUDENT,
            "losses": {"cosine": 1.0},
            "teacher_targets": "online",
            "train": {"epochs": 1000, "max_steps": steps, "batch_size": 64},
        },
    }
    Orchestrator(validate_raw(raw, "data_scale")).run(force=True)
    result = memory.stop()
    rate_steps = steps_at[10:]
    result.update(
        {
            "seconds_to_first_step": steps_at[0] - started,
            "steps": len(steps_at),
            "images_per_s": 64 * (len(rate_steps) - 1) / (rate_steps[-1] - rate_steps[0]),
        }
    )
    return result


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- 2. loader throughput --------------------------------------------------------------------------
def loader_rates(big: Path, batches: int, rounds: int) -> dict[str, Any]:
    from faces.recordio import RecordIOFaces
    from faces.streaming import EpochSampler, RecordIOSource, TrainingFaces
    from pipelines.training.loading import make_loader

    labels = RecordIOFaces(big).labels
    n = len(labels)
    rates: dict[str, list[float]] = {}

    def one_core(augment: str) -> float:
        torch.set_num_threads(1)  # as a loader worker runs
        faces = TrainingFaces(RecordIOSource(big, np.arange(n)), labels, augment=augment)
        rng = np.random.default_rng(len(rates.get("x", [])))
        items = rng.integers(0, n, size=batches * 64 // 4)
        start = time.perf_counter()
        for i in items:
            faces[(0, int(i))]
        return len(items) / (time.perf_counter() - start)

    for r in range(rounds):
        rates.setdefault("one_core_decode", []).append(one_core("none"))
        rates.setdefault("one_core_decode_augment", []).append(one_core("sample"))
        for workers in (0, 1, 2):
            faces = TrainingFaces(RecordIOSource(big, np.arange(n)), labels)
            sampler = EpochSampler(n, 64, seed=r)
            loader = iter(make_loader(faces, sampler, 64, workers))
            for _ in range(3):  # workers started, queues filled
                next(loader)
            start = time.perf_counter()
            for _ in range(batches):
                next(loader)
            rates.setdefault(f"workers_{workers}", []).append(
                64 * batches / (time.perf_counter() - start)
            )
            del loader
    return {k: {"median": float(np.median(v)), "rounds": v} for k, v in rates.items()}


# -- 3 and 4. training steps fed by the stream or from memory; bf16 vs fp32 -----------------------
def _student() -> torch.nn.Module:
    from students.registry import create_student

    torch.manual_seed(0)
    return create_student("birealface", embedding_size=EMBEDDING, **STUDENT)


def _train(
    loader: Any,
    steps: int,
    teacher: torch.nn.Module | None,
    student: torch.nn.Module,
    head: torch.nn.Module | None = None,
    bf16: bool = False,
    skip: int = 3,
) -> float:
    """``steps`` optimiser steps; images/s over all but the first ``skip``."""
    import torch.nn.functional as F

    from faces.transforms import normalise
    from teachers.train import margin_loss

    params = list(student.parameters()) + (list(head.parameters()) if head else [])
    opt = torch.optim.Adam(params, lr=2e-3)
    student.train()
    it = iter(loader)
    start = None
    for step in range(steps):
        if step == skip:
            start = time.perf_counter()
        images, _, labels, _ = next(it)
        x = normalise(images)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            emb = student(x)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
        with torch.autocast("cpu", enabled=False):
            if teacher is not None:
                loss = 1 - F.cosine_similarity(emb.float(), target.float()).mean()
            else:
                loss = margin_loss(head, emb.float(), labels)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return 64 * (steps - skip) / (time.perf_counter() - start)


def stream_vs_memory(small: Path, steps: int, rounds: int, workers: int) -> dict[str, Any]:
    from faces.recordio import RecordIOFaces
    from faces.streaming import EpochSampler, RecordIOSource, TensorSource, TrainingFaces
    from pipelines.training.loading import make_loader, training_threads
    from teachers.registry import create_teacher

    reader = RecordIOFaces(small)
    labels = reader.labels
    stream = RecordIOSource(small, np.arange(len(labels)))
    memory = TensorSource(torch.stack([stream.read(i) for i in range(len(stream))]))
    torch.set_num_threads(training_threads(os.cpu_count() or 1, workers))
    torch.manual_seed(1)
    teacher = create_teacher("vit_face_micro", embedding_size=EMBEDDING).eval()
    rates: dict[str, list[float]] = {"memory": [], "stream": []}
    for r in range(rounds):
        for name, source in (("memory", memory), ("stream", stream)):
            faces = TrainingFaces(source, labels, seed=r)
            loader = make_loader(faces, EpochSampler(len(labels), 64, r), 64, workers)
            rates[name].append(_train(loader, steps, teacher, _student()))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    return {
        "workers": workers,
        "images_per_s": med,
        "rounds": rates,
        "stream_over_memory": med["stream"] / med["memory"],
    }


def bf16_vs_fp32(small: Path, evaluation: Path, steps: int, workers: int) -> dict[str, Any]:
    from faces.data import load_image, make_pairs, scan_image_folder
    from faces.evaluate import evaluate_sets, torch_embed_fn
    from faces.margins import create_margin_head
    from faces.recordio import RecordIOFaces
    from faces.streaming import EpochSampler, RecordIOSource, TensorSource, TrainingFaces
    from faces.verification_sets import VerificationSet
    from pipelines.training.loading import make_loader

    flags = Path("/proc/cpuinfo").read_text().split()
    reader = RecordIOFaces(small)
    labels = reader.labels
    stream = RecordIOSource(small, np.arange(len(labels)))
    memory = TensorSource(torch.stack([stream.read(i) for i in range(len(stream))]))
    index = scan_image_folder(evaluation, cache=False)
    images = torch.stack([torch.from_numpy(load_image(p)) for p in index.paths])
    sets = [VerificationSet("eval", images, make_pairs(index.labels, 2000, 0))]
    out: dict[str, Any] = {
        "cpu_flags": {f: f in flags for f in ("amx_bf16", "avx512_bf16", "avx512f")},
        "steps": steps,
    }
    classes = int(labels.max()) + 1
    for name, bf16 in (("fp32", False), ("bf16", True)):
        student = _student()
        torch.manual_seed(0)
        head = create_margin_head("arcface", EMBEDDING, classes, s=32.0, m=0.3)
        faces = TrainingFaces(memory, labels, seed=0)
        loader = make_loader(faces, EpochSampler(len(labels), 64, 0), 64, workers)
        try:
            rate = _train(loader, steps, None, student, head, bf16=bf16)
        except Exception as exc:  # noqa: BLE001 - report what fails under autocast
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        student.eval()
        acc = evaluate_sets(torch_embed_fn(student), sets)["verify.eval.acc"]
        out[name] = {"images_per_s": rate, "acc": acc}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=10_000)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200, help="pipeline distillation steps")
    parser.add_argument("--train-steps", type=int, default=25, help="steps per speed round")
    parser.add_argument("--bf16-steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="runs/data_scale")
    parser.add_argument("--json", default=None)
    parser.add_argument("--sections", default="1234", help="which of the 4 parts to run")
    parser.add_argument(
        "--child",
        nargs=5,
        metavar=("DATA", "EVAL", "TEACHER", "OUT", "STEPS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.child:
        data, evaluation, teacher, out, steps = args.child
        result = child_pipeline(Path(data), Path(evaluation), Path(teacher), Path(out), int(steps))
        print(json.dumps(result))
        return 0

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sets = make_sets(work, args.faces, args.copies)
    from teachers.registry import create_teacher

    teacher_ckpt = work / "teacher_init.pt"
    torch.manual_seed(0)
    torch.save(
        create_teacher("vit_face_micro", embedding_size=EMBEDDING).state_dict(), teacher_ckpt
    )
    report: dict[str, Any] = {"faces_small": args.faces, "faces_big": args.faces * args.copies}
    cpus = len(os.sched_getaffinity(0))
    workers = max(0, cpus - 1)

    if "1" in args.sections:
        report["pipeline"] = pipeline_runs(sets, teacher_ckpt, work, args.steps, args.rounds)
    if "2" in args.sections:
        print("2. loader throughput ...", flush=True)
        report["loader"] = loader_rates(sets["big"], batches=30, rounds=args.rounds)
        print(f"   {json.dumps({k: round(v['median']) for k, v in report['loader'].items()})}")
    if "3" in args.sections:
        print("3. distillation fed by the stream vs from memory ...", flush=True)
        report["stream_vs_memory"] = stream_vs_memory(
            sets["small"], args.train_steps, args.rounds, workers
        )
        print(
            f"   {json.dumps(report['stream_vs_memory']['images_per_s'])} ratio "
            f"{report['stream_vs_memory']['stream_over_memory']:.3f}"
        )
    if "4" in args.sections:
        print("4. bf16 vs fp32 on the CPU ...", flush=True)
        report["bf16"] = bf16_vs_fp32(sets["small"], sets["eval"], args.bf16_steps, workers)
        print(f"   {json.dumps(report['bf16'])}")
    print(json.dumps(report, indent=1))
    if args.json:  # parts run later update their keys of an earlier report
        path = Path(args.json)
        merged = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**merged, **report}, indent=1) + "\n")
    return 0


def pipeline_runs(
    sets: dict[str, Path], teacher_ckpt: Path, work: Path, steps: int, rounds: int
) -> dict[str, Any]:
    """Part 1: the pipeline on the small and the big set, alternating, ``rounds`` each."""
    print("1. pipeline runs (teacher from checkpoint + distill, streamed) ...", flush=True)
    runs: dict[str, list[dict]] = {}
    for _ in range(max(1, rounds - 1)):
        for name in ("small", "big"):
            result = _run_child(
                [
                    "--child",
                    str(sets[name]),
                    str(sets["eval"]),
                    str(teacher_ckpt),
                    str(work / f"pipeline_{name}"),
                    str(steps),
                ]
            )
            runs.setdefault(name, []).append(result)
            print(f"   {name}: {json.dumps(result)}", flush=True)
    return {
        "runs": runs,
        "steps": steps,
        "student": STUDENT,
        "pss_ratio_big_over_small": max(r["peak_pss_mib"] for r in runs["big"])
        / max(r["peak_pss_mib"] for r in runs["small"]),
        "rss_ratio_big_over_small": max(r["peak_rss_main_mib"] for r in runs["big"])
        / max(r["peak_rss_main_mib"] for r in runs["small"]),
    }


if __name__ == "__main__":
    sys.exit(main())
