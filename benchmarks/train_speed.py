"""Distillation training speed on the CPU: today's fp32 eager step against the faster paths.

For each student (BiRealFace width 64 and QuickNet-small by default) one process builds the
same student once per path, from the same seed, as :class:`distill.module.Distiller` with
cached teacher targets (batch 64, Adam, the stage's own training step) and times it in
alternating rounds, so that the VM's drift hits every path alike. Paths:

- ``fp32``: float32, default memory layout, eager (the step before this benchmark existed);
- ``channels_last``: the same with channels-last tensors;
- ``bf16``: channels-last under bf16 autocast, as Lightning's ``bf16-mixed`` runs it (the
  losses stay float32) -- only on CPUs with native bf16 (AMX, AVX-512-BF16);
- ``compiled``: ``bf16`` (or ``channels_last`` without native bf16) with the student's
  forward and backward compiled by ``torch.compile``; its compilation time is printed apart.

Then every path trains 50 steps from the same start on the same batches, and its losses are
compared with the fp32 path's: the mean over the 50 steps of |loss - loss_fp32| / loss_fp32
and the same for the mean of the last 10 steps. A 1-bit network's trajectory is chaotic (a
rounding difference flips a sign, which changes the next step), so the channels_last path,
which differs from fp32 only in the order of float32 sums, shows the scale of that noise.
A path passes when both figures are under ``--tolerance`` (default 0.03).

    .venv/bin/python benchmarks/train_speed.py [--students birealface quicknet_small]
        [--rounds 3] [--steps 4] [--threads N] [--json benchmarks/results/train_speed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from distill.acceleration import compiler_available, cpu_has_native_bf16  # noqa: E402
from distill.module import Distiller  # noqa: E402
from students.registry import create_student  # noqa: E402
from students.schedules import bnn_optimizer  # noqa: E402

STUDENT_ARGS: dict[str, dict[str, Any]] = {
    "birealface": {"width": 64, "depths": [2, 2, 2]},
    "quicknet_small": {},
}
BATCH, POOL, LOSS_STEPS = 64, 8, 50


class TrainPath:
    """One way of running the training step: layout, autocast dtype, compilation."""

    def __init__(self, name: str, channels_last: bool, bf16: bool, compiled: bool) -> None:
        self.name, self.channels_last, self.bf16, self.compiled = (
            name,
            channels_last,
            bf16,
            compiled,
        )

    def autocast(self) -> Any:
        if self.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def paths() -> list[TrainPath]:
    bf16 = cpu_has_native_bf16()
    out = [TrainPath("fp32", False, False, False), TrainPath("channels_last", True, False, False)]
    if bf16:
        out.append(TrainPath("bf16", True, True, False))
    if compiler_available():
        out.append(TrainPath("compiled", True, bf16, True))
    return out


def batches(n: int, targets: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """``n`` batches as the loader gives them: uint8 faces, target rows, labels, mirror flags."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.randint(0, 256, (BATCH, 3, 112, 112), dtype=torch.uint8, generator=g)
        index = torch.randint(0, targets, (BATCH,), generator=g)
        labels = torch.full((BATCH,), -1, dtype=torch.long)
        mirror = torch.randint(0, 2, (BATCH,), generator=g).bool()
        out.append((images, index, labels, mirror))
    return out


def build(student: str, path: TrainPath, cached: torch.Tensor, total_steps: int) -> tuple[Any, Any]:
    torch.manual_seed(0)
    model = create_student(student, embedding_size=cached.shape[-1], **STUDENT_ARGS[student])
    module = Distiller(
        model,
        None,
        {"cosine": 1.0},
        cached=cached,
        augment=False,
        channels_last=path.channels_last,
        compile_student=path.compiled,
    )
    module.log = lambda *a, **k: None  # no trainer here: the step's logging is a no-op
    module.train()
    opt = bnn_optimizer(module.trainable_parameters(), total_steps, 2e-3)
    return module, opt


def step(module: Distiller, opt: dict[str, Any], path: TrainPath, batch: Any, i: int) -> float:
    with path.autocast():  # what Lightning's precision plugin wraps around training_step
        loss = module.training_step(batch, i)
    opt["optimizer"].zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), 5.0)
    opt["optimizer"].step()
    opt["lr_scheduler"]["scheduler"].step()
    return float(loss.detach())


def speed(student: str, rounds: int, steps: int, cached: torch.Tensor) -> dict[str, Any]:
    pool = batches(POOL, len(cached), seed=1)
    runs: dict[str, Any] = {}
    for path in paths():
        module, opt = build(student, path, cached, 10_000)
        start = time.perf_counter()
        step(module, opt, path, pool[0], 0)  # warm-up; for ``compiled`` also compilation
        step(module, opt, path, pool[1], 1)
        runs[path.name] = {
            "module": module,
            "opt": opt,
            "path": path,
            "ips": [],
            "first_steps_s": time.perf_counter() - start,
        }
    for r in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for i in range(steps):
                step(run["module"], run["opt"], run["path"], pool[i % POOL], i)
            run["ips"].append(steps * BATCH / (time.perf_counter() - start))
            print(f"  {student} round {r + 1} {name:14s} {run['ips'][-1]:6.1f} img/s", flush=True)
    base = statistics.median(runs["fp32"]["ips"])
    return {
        name: {
            "images_per_s": statistics.median(run["ips"]),
            "rounds": run["ips"],
            "speedup": statistics.median(run["ips"]) / base,
            "first_two_steps_s": run["first_steps_s"],
        }
        for name, run in runs.items()
    }


def loss_match(student: str, cached: torch.Tensor, tolerance: float) -> dict[str, Any]:
    data = batches(LOSS_STEPS, len(cached), seed=2)
    losses: dict[str, list[float]] = {}
    for path in paths():
        module, opt = build(student, path, cached, LOSS_STEPS)
        losses[path.name] = [step(module, opt, path, b, i) for i, b in enumerate(data)]
    ref = losses["fp32"]
    out = {}
    for name, got in losses.items():
        per_step = statistics.mean(abs(a - b) / abs(b) for a, b in zip(got, ref, strict=True))
        tail = abs(statistics.mean(got[-10:]) - statistics.mean(ref[-10:])) / statistics.mean(
            ref[-10:]
        )
        out[name] = {
            "mean_rel_diff": per_step,
            "last10_rel_diff": tail,
            "first_loss": got[0],
            "last10_loss": statistics.mean(got[-10:]),
            "passes": per_step <= tolerance and tail <= tolerance,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--students", nargs="+", default=list(STUDENT_ARGS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per path and round")
    ap.add_argument("--threads", type=int, default=None, help="default: every core allowed")
    ap.add_argument("--tolerance", type=float, default=0.03)
    ap.add_argument("--skip-losses", action="store_true", help="speed only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from pipelines.training.fit import available_cpus

    unknown = [s for s in args.students if s not in STUDENT_ARGS]
    if unknown:
        sys.exit(f"--students: unknown {unknown}; this benchmark knows {sorted(STUDENT_ARGS)}")
    warnings.filterwarnings("ignore")
    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    dim = 128
    cached = torch.nn.functional.normalize(
        torch.randn(4096, 2, dim, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    print(
        f"threads {threads}, native bf16 {cpu_has_native_bf16()}, "
        f"C++ compiler {compiler_available()}, batch {BATCH}, torch {torch.__version__}"
    )
    report: dict[str, Any] = {
        "threads": threads,
        "native_bf16": cpu_has_native_bf16(),
        "batch": BATCH,
        "torch": torch.__version__,
        "students": {},
    }
    for student in args.students:
        result = {"speed": speed(student, args.rounds, args.steps, cached)}
        if not args.skip_losses:
            result["losses"] = loss_match(student, cached, args.tolerance)
        report["students"][student] = result
        print(f"\n{student}: images/s (median of {args.rounds} rounds of {args.steps} steps)")
        for name, s in result["speed"].items():
            line = f"  {name:14s} {s['images_per_s']:6.1f} img/s  {s['speedup']:4.2f}x fp32"
            line += f"  first two steps {s['first_two_steps_s']:5.1f} s"
            if "losses" in result:
                m = result["losses"][name]
                line += (
                    f"  | 50-step loss vs fp32: mean {m['mean_rel_diff']:.3%}, "
                    f"last 10 {m['last10_rel_diff']:.3%} "
                    f"{'ok' if m['passes'] else 'OVER ' + format(args.tolerance, '.0%')}"
                )
            print(line, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
