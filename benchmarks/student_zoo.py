"""The binary student zoo beside the seed paper's Table 2, exported and timed on this machine.

    python benchmarks/student_zoo.py [--runs 50] [--only quicknet_small ...] [--markdown]
        [--json rows.json] [--faces ../shared/faces/celeba150] [--converter onnx-tf]
        [--eval-pairs 60000 6000] [--eval-images 0] [--noise-draws 2] [--threads 1]
        [--rounds 3] [--out runs/student_zoo] [--reuse] [--update rows.json]
        [--distill-steps 300 --train-faces ../shared/faces/glint24 --teacher CKPT]

For every registered student (random weights, BatchNorm statistics calibrated on the probe
faces so activations have realistic ranges; or, with ``--distill-steps N``, distilled for N
steps from the MobileFaceNet teacher on ``--train-faces`` by the product's Distiller, cosine
loss on cached teacher embeddings, Adam with linear decay, so that the weights are those of a
trained network and ``--faces`` are people it never saw): export through the spine's export chain
(QONNX -> lowering -> onnx2tf -> LCE flatbuffer, and the float twin to TFLite) and report
params, 1-bit and 32-bit MACs and size as stored in the LCE flatbuffer (the counter of
``facekd profile``) beside Table 2, ``export.bconv_coverage``, the minimum cosine between
PyTorch and LCE embeddings on real aligned faces, and the latency (batch 1, 1 thread, median
over ``--runs`` after warm-up of the fastest of 3 fresh interpreters, the lowest of
``--rounds`` such figures; on x86 one LCE interpreter can run up to 2x slower than another)
of the LCE model (indirect BGEMM kernel, its float ops on XNNPACK; in brackets with them on
TFLite's builtin kernels) beside its float twin in TFLite with XNNPACK; each round passes over
every row, so a slow spell of the machine costs one round of a row, not all; every row is
timed before any accuracy evaluation.
x86 has only LCE's generic kernels: the ratios are proxies for ARM. Exports
stay in ``--out``/<converter>/<student> (``--reuse`` times them again without re-exporting,
and with ``--distill-steps`` reuses the distilled weights, also those distilled for the
other converter: ``--converter onnx-tf --reuse`` exports the same trained students).

Why distil first: a 1-bit network with random weights is chaotic. A float rounding difference
of 1e-7 flips the sign of an activation that sits at zero, and with random weights one flip
spreads through every later layer: the column "PyTorch-PyTorch at 1e-6 noise" measures that
sensitivity of the model itself. Training makes students far less chaotic, so their
PyTorch-LCE parity measures the export. With trained students the table also reports the
10-fold verification accuracy of PyTorch and of the LCE flatbuffer on ``--eval-pairs`` pairs
of the ``--faces`` people, the difference between them, and the floor of that difference:
PyTorch's own accuracy change when its input is perturbed by 1e-6 (``--noise-draws`` draws).
A partly trained student still has a few faces whose embedding moves under such a
perturbation, and the 10-fold protocol turns a few moved pairs near the threshold into tenths
of a point with a random sign: a spread that shrinks with the number of pairs. So the
headline uses 60,000 pairs (celeba150 has 36,835 genuine ones), and 6,000 (LFW's protocol
size) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Seed paper, Table 2 (LCE on one Jetson Nano core, 112x112): 1-bit MACs, 32-bit MACs, size
# in MB, params. Reference values to compare with, not results of this project.
TABLE2 = {
    "binarydensenet45": (1.59e9, 59.7e6, 4.2, 13.1e6),
    "binarydensenet37": (1.12e9, 48.9e6, 2.6, 8.0e6),
    "binarydensenet28": (893.2e6, 49.99e6, 1.8, 4.5e6),
    "quicknet": (431.7e6, 6.8e6, 2.21, 12.7e6),
    "quicknet_small": (258.3e6, 3.4e6, 2.0, 12.1e6),
    "binaryfacenet": (184.9e6, 3.8e6, 1.3, 506e3),
}
PAPER_NAME = {"binaryfacenet_lce": "binaryfacenet", "quicknet_small_attn": "quicknet_small"}


def probe_faces(folder: Path | None, n: int):
    """``n`` aligned faces (normalised float batch): one per person of ``folder`` first."""
    import torch

    from faces.data import list_image_folder, load_images
    from faces.synthetic import write_synthetic_faces
    from faces.transforms import normalise

    with tempfile.TemporaryDirectory() as tmp:
        if folder is None or not folder.is_dir():
            folder = Path(tmp) / "faces"
            write_synthetic_faces(folder, identities=n, images_per_identity=2, seed=0)
        people = list_image_folder(folder, cache=False)
        paths = [Path(folder) / person / files[0] for person, files in sorted(people.items())]
        paths += [Path(folder) / p / f for p, fs in sorted(people.items()) for f in fs[1:]]
        images = load_images(paths[:n])
    return normalise(images).to(torch.float32), str(folder)


def labelled_faces(folder: Path, limit: int | None):
    """uint8 faces of ``folder`` (ImageFolder) and their identity labels, the first ``limit``
    of a fixed shuffle (every image when None)."""
    import torch

    from faces.data import list_image_folder, load_images

    people = sorted(list_image_folder(folder, cache=False).items())
    items = [(folder / p / f, k) for k, (p, fs) in enumerate(people) for f in sorted(fs)]
    if limit is not None:
        order = np.random.default_rng(0).permutation(len(items))[:limit]
        items = [items[i] for i in sorted(order)]
    images = load_images([path for path, _ in items])
    return torch.as_tensor(images), np.array([k for _, k in items])


def calibrate_batchnorm(model, probe) -> None:
    """Set BatchNorm running statistics to those of ``probe`` (cumulative average)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(probe)
    model.eval()


def teacher_cache(teacher_ckpt: Path, images):
    """The MobileFaceNet teacher's embeddings of ``images`` and their mirrors (N, 2, 128)."""
    import torch

    from distill.module import teacher_embeddings
    from teachers import create_teacher
    from teachers.checkpoint import load_checkpoint_into

    teacher = load_checkpoint_into(create_teacher("mobilefacenet"), teacher_ckpt).eval()
    with torch.no_grad():
        return teacher_embeddings(teacher, images)


def distil(student, images, cached, steps: int, batch_size: int = 32, lr: float = 2e-3) -> float:
    """Train ``student`` for ``steps`` steps on the cached teacher embeddings; returns seconds."""
    import time

    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from distill.module import Distiller

    module = Distiller(student, None, {"cosine": 1.0}, lr=lr, cached=cached)
    loader = DataLoader(
        TensorDataset(images, torch.arange(len(images))),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
    )
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    student.eval()
    return time.perf_counter() - start


def verification(embeddings: np.ndarray, pairs: np.ndarray) -> float:
    """10-fold verification accuracy on ``pairs`` (i, j, same) of L2-normalised embeddings."""
    from faces.verification import cosine_scores, verification_metrics

    scores = cosine_scores(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])
    return float(verification_metrics(scores, pairs[:, 2])["acc"])


def pytorch_reference(student, images, noise_draws: int) -> dict:
    """PyTorch's embeddings of ``images``, and the embeddings of the same model on inputs
    perturbed by 1e-6 relative noise, one set per draw: how far the model's own float rounding
    moves them, the floor of any export's accuracy delta."""
    from faces.evaluate import embed_images, perturbed_embed_fn, torch_embed_fn

    embed = torch_embed_fn(student)
    return {
        "embeddings": embed_images(embed, images),
        "noisy": [
            embed_images(perturbed_embed_fn(embed, 1e-6, k), images) for k in range(noise_draws)
        ],
    }


def accuracy_rows(reference: dict, lce_embeddings: np.ndarray, pair_sets: list) -> list[dict]:
    """Per pair set: PyTorch and LCE 10-fold accuracy, their delta (pt) and PyTorch's own
    deltas under 1e-6 input noise (pt, one per draw)."""
    out = []
    for pairs in pair_sets:
        acc_pt = verification(reference["embeddings"], pairs)
        acc_lce = verification(lce_embeddings, pairs)
        out.append(
            {
                "pairs": len(pairs),
                "acc_pytorch": acc_pt,
                "acc_lce": acc_lce,
                "delta_pt": 100 * (acc_lce - acc_pt),
                "noise_deltas_pt": [
                    100 * (verification(e, pairs) - acc_pt) for e in reference["noisy"]
                ],
            }
        )
    return out


def parity(student, probe, flatbuffer: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Cosines per probe face: LCE vs PyTorch, and PyTorch vs itself on the probe with
    1e-6 relative noise (how far the model's own float rounding can move its embeddings: one
    flipped sign changes a whole 3x3xC neighbourhood of the next binary layer)."""
    import torch

    from export.runtime import TFLiteRunner

    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return (a * (b / np.linalg.norm(b, axis=1, keepdims=True))).sum(1)

    with torch.no_grad():
        ref = student(probe).numpy()
        gen = torch.Generator().manual_seed(1)
        noisy = probe * (1 + 1e-6 * torch.randn(probe.shape, generator=gen))
        perturbed = student(noisy).numpy()
    lce = TFLiteRunner(flatbuffer, binary=True).embed(probe.numpy())
    return cos(ref, lce), cos(ref, perturbed)


def xnnpack_parity(probe, flatbuffer: bytes) -> np.ndarray:
    """Cosine per probe face between the LCE model with its float ops on XNNPACK (what is
    timed) and on TFLite's builtin kernels (what parity and accuracy use)."""
    from export.runtime import TFLiteRunner

    a = TFLiteRunner(flatbuffer, binary=True, xnnpack=True).embed(probe.numpy())
    b = TFLiteRunner(flatbuffer, binary=True, xnnpack=False).embed(probe.numpy())
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timing rounds (LCE and float twin alternately); the lowest median is reported",
    )
    ap.add_argument("--only", nargs="*", help="student names (default: the zoo)")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared/faces/celeba150")
    ap.add_argument("--probe", type=int, default=32)
    ap.add_argument(
        "--converter", nargs="+", default=["onnx2tf"], help="onnx2tf and/or onnx-tf: one row each"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs/student_zoo", help="exports")
    ap.add_argument("--reuse", action="store_true", help="time earlier exports in --out again")
    ap.add_argument("--distill-steps", type=int, default=0, help="0: random weights")
    ap.add_argument("--distill-batch", type=int, default=32)
    ap.add_argument("--train-faces", type=Path, default=ROOT.parent / "shared/faces/glint24")
    ap.add_argument(
        "--teacher",
        type=Path,
        default=ROOT.parent / "shared/weights/mobilefacenet_casia_068.ckpt",
        help="MobileFaceNet checkpoint (the teacher of --distill-steps)",
    )
    ap.add_argument(
        "--eval-images", type=int, default=0, help="--faces images for pairs (0: all of them)"
    )
    ap.add_argument(
        "--eval-pairs",
        type=int,
        nargs="+",
        default=[60000, 6000],
        help="verification pairs: the first count is the headline, every count gets a delta "
        "(6000 is LFW's protocol size, too few to resolve 0.2 pt for these students)",
    )
    ap.add_argument(
        "--noise-draws",
        type=int,
        default=2,
        help="PyTorch accuracy with 1e-6 input noise, this many draws: the model's own spread",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of the accuracy evaluation (timing always uses 1; it runs first)",
    )
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--table-from", type=Path, help="print the table of a --json file and exit")
    ap.add_argument(
        "--update",
        type=Path,
        metavar="JSON",
        help="time the rows again (with --reuse), replace their latency figures in this --json "
        "file, skip the accuracy evaluation",
    )
    args = ap.parse_args(argv)
    if args.table_from:
        print_table(json.loads(args.table_from.read_text()), args.markdown)
        return 0

    import torch

    from export.student_export import export_student
    from pipelines.orchestration.summary import machine_description
    from students import create_student, list_students

    names = args.only or [n for n in list_students() if n != "birealface"] + ["birealface"]
    probe, source = probe_faces(args.faces, args.probe)
    print(f"probe: {len(probe)} faces from {source}; {machine_description()}", file=sys.stderr)
    trained = args.distill_steps > 0
    if trained:
        from faces.data import make_pairs

        train_images, _ = labelled_faces(args.train_faces, None)
        cached = teacher_cache(args.teacher, train_images)
        eval_images, eval_labels = labelled_faces(args.faces, args.eval_images or None)
        pair_sets = [make_pairs(eval_labels, n, seed=0) for n in args.eval_pairs]
        print(
            f"distilling {args.distill_steps} steps on {len(train_images)} faces of "
            f"{args.train_faces}; verification: {', '.join(str(len(p)) for p in pair_sets)} "
            f"pairs of {len(eval_images)} faces",
            file=sys.stderr,
        )
    rows, exports, floats, students = [], [], [], {}
    for name in names:  # export and parity of every row, then timing, then accuracy
        torch.manual_seed(0)
        size = {"embedding_size": cached.shape[-1]} if trained else {}
        student = create_student(name, **size)
        saved = sorted(args.out.glob(f"*/{name}/student.pt"))  # distilled by an earlier run
        seconds = float("nan")
        if trained and args.reuse and saved:
            student.load_state_dict(torch.load(saved[0], weights_only=True))
            student.eval()
        elif trained:
            seconds = distil(student, train_images, cached, args.distill_steps, args.distill_batch)
            for converter in args.converter:
                (args.out / converter / name).mkdir(parents=True, exist_ok=True)
                torch.save(student.state_dict(), args.out / converter / name / "student.pt")
        else:
            calibrate_batchnorm(student, probe)  # deterministic: --reuse rebuilds the same model
        students[name] = student
        for converter in args.converter:
            out = args.out / converter / name
            report = out / "export_report.json"
            if args.reuse and report.is_file():  # time the flatbuffers exported before
                exported = json.loads(report.read_text())
                metrics, float_layers = exported["metrics"], exported["float_layers"]
            else:
                twin = create_student(name, binary=False, **size).eval()
                twin.load_state_dict(student.state_dict())
                result = export_student(student, twin, probe, out, converter, allow_partial=True)
                metrics, float_layers = result.metrics, result.float_layers
            lce = (out / "student_lce.tflite").read_bytes()
            flt = (out / "student_float.tflite").read_bytes()
            cos_lce, cos_self = parity(student, probe, lce)
            cos_xnnpack = xnnpack_parity(probe, lce)
            m = metrics
            row = {
                "student": name,
                "params": sum(p.numel() for p in student.parameters()),
                "binary_macs": int(m["model.binary_macs"]),
                "float_macs": int(m["model.float_macs"]),
                "size_bytes": int(m["model.size_bytes"]),
                "bconv_coverage": m["export.bconv_coverage"],
                "float_layers": float_layers,
                "cosine_min": float(cos_lce.min()),
                "cosine_median": float(np.median(cos_lce)),
                "self_cosine_min": float(cos_self.min()),
                "self_cosine_median": float(np.median(cos_self)),
                "xnnpack_cosine_min": float(cos_xnnpack.min()),
                "converter": converter,
            }
            if trained:
                row["distill_steps"] = args.distill_steps
                row["distill_batch"] = args.distill_batch
                row["distill_seconds"] = seconds
            rows.append(row)
            exports.append(lce)
            floats.append(flt)
    time_rows(rows, exports, floats, args.runs, args.rounds)
    for row in rows:
        print(json.dumps(row), file=sys.stderr, flush=True)
    if args.update:
        return update_timing(args.update, rows, args.markdown)
    if trained:
        evaluate_rows(rows, exports, students, eval_images, pair_sets, args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print_table(rows, args.markdown)
    return 0


def time_rows(
    rows: list[dict], lce: list[bytes], floats: list[bytes], runs: int, rounds: int
) -> None:
    """Latency of every row: LCE (float ops on XNNPACK), float twin, LCE (builtin float
    kernels), each the median of ``runs`` of the fastest of 3 fresh interpreters (x86 LCE
    interpreters are bimodal, runtime.py). ``rounds`` passes over all rows, each row's three
    runtimes back to back: a slow spell of the machine hits one round of a row, not all; the
    lowest figure of each is kept."""
    from export.runtime import measure_latency

    timing = {"threads": 1, "runs": runs, "warmup": 10, "instances": 3}
    fast = "latency_ms_p50_min_instance"
    for row in rows:
        for key in ("lce_ms_rounds", "float_ms_rounds", "lce_builtin_ms_rounds"):
            row[key] = []
    for _ in range(rounds):
        for row, lce_fb, flt_fb in zip(rows, lce, floats, strict=True):
            row["lce_ms_rounds"].append(measure_latency(lce_fb, binary=True, **timing)[fast])
            row["float_ms_rounds"].append(measure_latency(flt_fb, binary=False, **timing)[fast])
            row["lce_builtin_ms_rounds"].append(
                measure_latency(lce_fb, binary=True, xnnpack=False, **timing)[fast]
            )
    for row in rows:
        row["lce_ms"] = min(row["lce_ms_rounds"])
        row["float_ms"] = min(row["float_ms_rounds"])
        row["lce_builtin_ms"] = min(row["lce_builtin_ms_rounds"])
        row["speedup"] = row["float_ms"] / row["lce_ms"]


TIMING_KEYS = (
    "lce_ms",
    "float_ms",
    "lce_ms_rounds",
    "float_ms_rounds",
    "lce_builtin_ms",
    "lce_builtin_ms_rounds",
    "xnnpack_cosine_min",
    "speedup",
)


def update_timing(path: Path, rows: list[dict], markdown: bool) -> int:
    """Replace the latency figures of the rows of ``path`` (a --json file) that were timed
    again (same student and converter), keep everything else, and print the whole table."""
    saved = json.loads(path.read_text())
    timed = {(r["student"], r["converter"]): r for r in rows}
    missing = [key for key in timed if key not in {(r["student"], r["converter"]) for r in saved}]
    if missing:
        raise SystemExit(f"{path}: no row for {', '.join('/'.join(k) for k in missing)}")
    for row in saved:
        new = timed.get((row["student"], row["converter"]))
        if new is not None:
            row.update({key: new[key] for key in TIMING_KEYS})
    path.write_text(json.dumps(saved, indent=2))
    print_table(saved, markdown)
    return 0


def evaluate_rows(rows, exports, students, images, pair_sets, args) -> None:
    """Add verification accuracy (PyTorch vs LCE, every pair set; the first is the headline)
    and parity over every evaluation face to each row; PyTorch runs once per student."""
    import torch

    from export.runtime import TFLiteRunner
    from faces.evaluate import embed_images

    torch.set_num_threads(args.threads)
    for name, student in students.items():
        reference = pytorch_reference(student, images, args.noise_draws)
        for row, lce in zip(rows, exports, strict=True):
            if row["student"] != name:
                continue
            runner = TFLiteRunner(lce, threads=args.threads, binary=True)
            lce_emb = embed_images(runner.embed, images)
            by_pairs = accuracy_rows(reference, lce_emb, pair_sets)
            head = by_pairs[0]
            row["eval_images"], row["eval_pairs"] = len(images), head["pairs"]
            row["acc_pytorch"], row["acc_lce"] = head["acc_pytorch"], head["acc_lce"]
            row["acc_delta_pt"] = head["delta_pt"]
            row["acc_noise_deltas_pt"] = head["noise_deltas_pt"]
            row["acc_by_pairs"] = by_pairs
            # parity over every evaluation face, not only the probe batch
            cosines = (reference["embeddings"] * lce_emb).sum(1)  # rows are L2-normalised
            row["eval_cosine_min"] = float(cosines.min())
            row["eval_share_cosine_099"] = float((cosines >= 0.99).mean())
            print(json.dumps(row), file=sys.stderr, flush=True)


def _vs(ours: float, paper: float | None, scale: float, unit: str = "") -> str:
    if paper is None:
        return f"{ours / scale:.1f}{unit}"
    return (
        f"{ours / scale:.1f}{unit} / {paper / scale:.1f}{unit} ({(ours / paper - 1) * 100:+.0f}%)"
    )


def print_table(rows: list[dict], markdown: bool) -> None:
    """Print the zoo table (markdown for docs/zoo.md, or plain)."""
    head = (
        "| student | converter | params (ours / paper) | 1-bit MACs M | 32-bit MACs M | "
        "LCE size MB | bconv coverage | cosine PyTorch-LCE min / median | "
        "PyTorch-PyTorch at 1e-6 noise min / median | LCE ms, float ops XNNPACK (builtin) | "
        "float twin ms | speed-up |"
    )
    trained = any("acc_pytorch" in r for r in rows)
    if trained:
        head += (
            " verify acc PyTorch / LCE (delta pt) | PyTorch at 1e-6 noise: acc delta pt |"
            " eval faces: cosine min, share >= 0.99 |"
            " other pair counts: delta pt (PyTorch at 1e-6 noise) |"
        )
    print(head if markdown else head.replace("|", " "))
    if markdown:
        print("|" + "---|" * (16 if trained else 12))
    for r in rows:
        paper = TABLE2.get(PAPER_NAME.get(r["student"], r["student"]))
        bm, fm, mb, pp = paper if paper else (None, None, None, None)
        name = r["student"]
        if r.get("distill_steps"):
            name += f" ({r['distill_steps']} x {r.get('distill_batch', 32)})"
        cells = [
            name,
            r.get("converter", "onnx2tf"),
            _vs(r["params"], pp, 1e6, "M"),
            _vs(r["binary_macs"], bm, 1e6),
            _vs(r["float_macs"], fm, 1e6),
            _vs(r["size_bytes"], mb * 1e6 if mb else None, 1e6),
            f"{r['bconv_coverage']:.2f}",
            f"{r['cosine_min']:.4f} / {r['cosine_median']:.4f}",
            f"{r['self_cosine_min']:.4f} / {r['self_cosine_median']:.4f}",
            f"{r['lce_ms']:.2f}"
            + (f" ({r['lce_builtin_ms']:.2f})" if "lce_builtin_ms" in r else ""),
            f"{r['float_ms']:.2f}",
            f"{r['speedup']:.2f}x",
        ]
        if trained:
            pairs = f", {r['eval_pairs']} pairs" if "eval_pairs" in r else ""
            cells.append(
                f"{r['acc_pytorch']:.4f} / {r['acc_lce']:.4f} ({r['acc_delta_pt']:+.2f}){pairs}"
                if "acc_pytorch" in r
                else "-"
            )
            noise = r.get("acc_noise_deltas_pt")
            cells.append(", ".join(f"{d:+.2f}" for d in noise) if noise else "-")
            cells.append(
                f"{r['eval_cosine_min']:.4f}, {100 * r['eval_share_cosine_099']:.1f}%"
                if "eval_cosine_min" in r
                else "-"
            )
            cells.append(
                "; ".join(
                    f"{a['pairs']}: {a['delta_pt']:+.2f} ("
                    + ", ".join(f"{d:+.2f}" for d in a["noise_deltas_pt"])
                    + ")"
                    for a in r.get("acc_by_pairs", [])[1:]
                )
                or "-"
            )
        print("| " + " | ".join(cells) + " |" if markdown else "  ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
