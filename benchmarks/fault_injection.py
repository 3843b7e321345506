"""Kill a real-faces distillation pipeline with SIGKILL at random moments, resume it each time,
and compare its final result with a run that was never interrupted.

    python benchmarks/fault_injection.py --kills 5            # needs ../shared (faces, weights)

Both runs use the same pipeline (pretrained MobileFaceNet teacher, 1-bit BiRealFace student,
export to LCE, evaluation) and seed, in their own output folders of ``--workdir``, with an
MLflow store there. Kill moments are drawn uniformly between 3 s and the reference run's
duration minus the time of the stages already finished; a kill waits, if needed, until the
run has progressed past the point of the previous kill (a new stage or a new epoch
checkpoint) so that kills spread over the whole pipeline; a kill that comes after the process
finished does not count (export and evaluate are then run again to be killed).
Prints a table of the kills and the metrics of both runs, checks that the weights of teacher
and student are identical, that the metrics match and that MLflow holds one parent run with
no run left RUNNING; writes ``fault_injection.json``. Exit code 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COMPARED = ("verify.{eval}.acc", "verify.{eval}.auc", "export.bconv_coverage")


def pipeline(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "pipeline": {"name": "fault_injection", "experiment": "fault-injection", "seed": 0},
        "stages": ["teacher", "distill", "export", "evaluate"],
        "data": {
            "train": str(Path(args.train).resolve()),
            "eval": str(Path(args.eval).resolve()),
            "eval_pairs": args.pairs,
        },
        "teacher": {"model": "mobilefacenet", "checkpoint": str(Path(args.checkpoint).resolve())},
        "distill": {
            "student": "birealface",
            "args": {"width": args.width, "depths": [1, 1]},
            "train": {"epochs": args.epochs, "batch_size": 64, "lr": 0.002},
        },
        "export": {"probe_images": 32},
        "evaluate": {"runs": 30, "warmup": 5, "instances": 2},
    }


def start(work: Path, out: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(work / "pipeline.yaml")]
    cmd += ["--set", f"pipeline.output_dir={work / out}"]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=open(log, "a"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
    )


def current_stage(out: Path) -> str:
    for stage in ("evaluate", "export", "distill", "teacher"):
        if (out / stage / "running.json").exists() and not (out / stage / "stage.json").exists():
            ckpt = out / stage / "checkpoints" / "last.ckpt"
            return f"{stage} (checkpoint on disk)" if ckpt.exists() else stage
    return "between stages"


def progress(out: Path) -> tuple:
    """Where a run stands: finished stages, running stages and their checkpoint times."""
    state = []
    for stage in ("teacher", "distill", "export", "evaluate"):
        ckpt = out / stage / "checkpoints" / "last.ckpt"
        state.append(
            (
                (out / stage / "stage.json").exists(),
                (out / stage / "running.json").exists(),
                ckpt.stat().st_mtime_ns if ckpt.exists() else 0,
            )
        )
    return tuple(state)


def remaining(out: Path, reference_s: float, work: Path) -> float:
    """The reference run's duration minus that of the stages this run has finished."""
    ref = {
        s: json.loads((work / "reference" / s / "stage.json").read_text())["seconds"]
        for s in ("teacher", "distill", "export", "evaluate")
    }
    done = sum(ref[s] for s in ref if (out / s / "stage.json").exists())
    return reference_s - done


def records(out: Path) -> dict[str, dict[str, Any]]:
    return {
        s: json.loads((out / s / "stage.json").read_text())
        for s in ("teacher", "distill", "export", "evaluate")
    }


def same_weights(a: Path, b: Path) -> bool:
    import torch

    pa = torch.load(a, map_location="cpu", weights_only=True)
    pb = torch.load(b, map_location="cpu", weights_only=True)
    if "state_dict" not in pa or "state_dict" not in pb:  # a pretrained checkpoint reference
        return pa.get("sha256") == pb.get("sha256") and "sha256" in pa
    sa, sb = pa["state_dict"], pb["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def mlflow_runs(work: Path, out: Path) -> list[Any]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("fault-injection")
    return mlflow.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`facekd.output_dir` = '{out.resolve()}'",
        output_format="list",
    )


def mlflow_checks(runs: list[Any], completions: int) -> dict[str, bool]:
    """One parent run per completed invocation (kills and resumes add none), at most one run
    per stage under each parent, the first parent holding all four stages, none RUNNING."""
    parents = sorted(
        (r for r in runs if "facekd.stage" not in r.data.tags), key=lambda r: r.info.start_time
    )
    by_parent: dict[str, list[str]] = {p.info.run_id: [] for p in parents}
    for r in runs:
        if "facekd.stage" in r.data.tags:
            by_parent.setdefault(r.data.tags.get("mlflow.parentRunId", "?"), []).append(
                r.data.tags["facekd.stage"]
            )
    stages = list(by_parent.values())
    return {
        f"{completions} MLflow parent run(s), one per completed invocation": len(parents)
        == completions
        and set(by_parent) == {p.info.run_id for p in parents},
        "no stage run twice under one parent (resumed, not duplicated)": all(
            len(s) == len(set(s)) for s in stages
        ),
        "first parent holds teacher, distill, export, evaluate": bool(parents)
        and sorted(by_parent[parents[0].info.run_id])
        == sorted(["teacher", "distill", "export", "evaluate"]),
        "no MLflow run left RUNNING": all(r.info.status != "RUNNING" for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--train", default=str(SHARED / "faces" / "glint24"))
    ap.add_argument("--eval", default=str(SHARED / "faces" / "celeba150"))
    ap.add_argument(
        "--checkpoint", default=str(SHARED / "weights" / "mobilefacenet_casia_068.ckpt")
    )
    ap.add_argument("--workdir", default="runs/fault_injection")
    ap.add_argument(
        "--reuse-reference",
        action="store_true",
        help="keep a finished reference run of --workdir (its duration: sum of its stages)",
    )
    args = ap.parse_args(argv)
    for path in (args.train, args.eval, args.checkpoint):
        if not Path(path).exists():
            print(f"{path} does not exist (this benchmark needs ../shared)", file=sys.stderr)
            return 2
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "pipeline.yaml").write_text(yaml.safe_dump(pipeline(args)))
    eval_name = Path(args.eval).resolve().name

    reused = args.reuse_reference and all(
        (work / "reference" / s / "stage.json").exists()
        for s in ("teacher", "distill", "export", "evaluate")
    )
    if reused:
        reference_s = sum(r["seconds"] for r in records(work / "reference").values())
        print(f"reference run reused: stages took {reference_s:.0f} s", flush=True)
    else:
        print("reference run (never interrupted) ...", flush=True)
        t0 = time.time()
        proc = start(work, "reference", work / "reference.log")
        if proc.wait() != 0:
            print((work / "reference.log").read_text()[-3000:], file=sys.stderr)
            return 1
        reference_s = time.time() - t0
        print(f"  {reference_s:.0f} s", flush=True)

    rng = random.Random(args.seed)
    name = f"interrupted-{time.strftime('%Y%m%d-%H%M%S')}"  # a fresh folder and MLflow runs
    out = work / name
    log = work / f"{name}.log"
    kills: list[dict[str, Any]] = []
    attempts = finished_early = 0
    t_start = time.time()
    last_kill = progress(out)
    while len(kills) < args.kills:
        attempts += 1
        delay = rng.uniform(3.0, max(10.0, remaining(out, reference_s, work)))
        proc = start(work, name, log)
        t1 = time.time()
        while proc.poll() is None and (time.time() - t1 < delay or progress(out) == last_kill):
            time.sleep(0.1)
        if proc.poll() is not None:  # finished (or failed) before the kill
            if proc.returncode != 0:
                print(log.read_text()[-3000:], file=sys.stderr)
                return 1
            finished_early += 1
            print(f"  attempt {attempts}: finished before the kill at {delay:.0f} s; again")
            for stage in ("evaluate", "export"):  # redo the last stages to keep killing
                (out / stage / "stage.json").unlink(missing_ok=True)
            continue
        where = current_stage(out)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = time.time() - t1
        last_kill = progress(out)
        kills.append({"kill": len(kills) + 1, "after_s": round(after, 1), "stage": where})
        print(f"  kill {len(kills)}: after {after:5.1f} s, in {where}", flush=True)
    proc = start(work, name, log)
    if proc.wait() != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        return 1
    interrupted_s = time.time() - t_start

    ref, res = records(work / "reference"), records(out)
    checks: dict[str, bool] = {
        "teacher weights identical": same_weights(
            work / "reference/teacher/teacher.pt", out / "teacher/teacher.pt"
        ),
        "student weights identical": same_weights(
            work / "reference/distill/student.pt", out / "distill/student.pt"
        ),
    }
    rows = []
    for stage in ("distill", "evaluate", "export"):
        for pattern in COMPARED:
            key = pattern.format(eval=eval_name)
            if key in ref[stage]["metrics"]:
                a, b = ref[stage]["metrics"][key], res[stage]["metrics"][key]
                rows.append((f"{stage}: {key}", a, b))
                checks[f"{stage} {key} equal"] = abs(a - b) <= 1e-9
    lat = ("bench.latency_ms_p50", ref["evaluate"]["metrics"], res["evaluate"]["metrics"])
    rows.append((f"evaluate: {lat[0]} (timing noise)", lat[1][lat[0]], lat[2][lat[0]]))
    checks.update(mlflow_checks(mlflow_runs(work, out), completions=finished_early + 1))

    print(f"\n{'metric':52s} {'uninterrupted':>14s} {'killed+resumed':>15s}")
    for name, a, b in rows:
        print(f"{name:52s} {a:14.4f} {b:15.4f}")
    print(f"\nreference {reference_s:.0f} s; with {len(kills)} kills {interrupted_s:.0f} s")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    report = {
        "kills": kills,
        "attempts": attempts,
        "reference_s": reference_s,
        "interrupted_s": interrupted_s,
        "metrics": [{"name": n, "reference": a, "resumed": b} for n, a, b in rows],
        "checks": checks,
    }
    (work / "fault_injection.json").write_text(json.dumps(report, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
