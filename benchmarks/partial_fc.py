"""Margin heads over 93 k and 360 k people: memory and step time with and without PartialFC.

Each configuration runs in a process of its own (its peak RSS is its own): an ArcFace head
(``faces.margins``) over ``C`` classes of 512-d embeddings, batch 128, trained with SGD
(momentum 0.9, InsightFace's choice) or AdamW for ``--steps`` steps on random embeddings and
labels; the head alone, no backbone, so the figures are what the head adds to a run. Reported:
peak RSS above the process's baseline, the head's parameter and optimizer-state bytes, and
the median step time (forward, backward, optimizer step) after 2 warm-up steps.

    .venv/bin/python benchmarks/partial_fc.py [--classes 93000 360000] [--rates 1.0 0.1]
        [--optimizers sgd adamw] [--steps 8] [--json benchmarks/results/partial_fc.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(classes: int, rate: float, optimizer: str, steps: int, batch: int) -> dict:
    import torch

    from faces.margins import create_margin_head
    from teachers.train import margin_loss

    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    head = create_margin_head("arcface", 512, classes, sample_rate=rate, s=64.0, m=0.5)
    if optimizer == "sgd":
        opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    times = []
    for step in range(steps + 2):
        emb = torch.randn(batch, 512, requires_grad=True)
        labels = torch.randint(0, classes, (batch,))
        start = time.perf_counter()
        loss, _ = margin_loss(head, emb, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() * p.element_size() for p in head.parameters())
    state = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    times.sort()
    return {
        "classes": classes,
        "sample_rate": rate,
        "optimizer": optimizer,
        "batch": batch,
        "peak_rss_above_start_mib": (peak - base) / 2**20,
        "head_params_mib": params / 2**20,
        "optimizer_state_mib": state / 2**20,
        "step_ms_median": 1000 * times[len(times) // 2],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[93_000, 360_000])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        classes, rate, optimizer = args.child
        row = child(int(classes), float(rate), optimizer, args.steps, args.batch)
        print(json.dumps(row))
        return 0
    rows = []
    print(
        f"{'classes':>8} {'rate':>5} {'opt':>6} {'peak MiB':>9} {'params':>7} "
        f"{'opt state':>9} {'step ms':>8}"
    )
    for classes in args.classes:
        for optimizer in args.optimizers:
            for rate in args.rates:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(classes),
                        str(rate),
                        optimizer,
                        "--steps",
                        str(args.steps),
                        "--batch",
                        str(args.batch),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{classes:>8} {rate:>5} {optimizer:>6} "
                    f"{row['peak_rss_above_start_mib']:>9.0f} {row['head_params_mib']:>7.0f} "
                    f"{row['optimizer_state_mib']:>9.0f} {row['step_ms_median']:>8.0f}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
