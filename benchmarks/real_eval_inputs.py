r"""Inputs of docs/evaluation.md's multi-set table on the real faces in ../shared.

Writes into OUT: ``celeba150_pairs.bin`` (the 3000 pairs, seed 0, that ``facekd eval`` draws
from the celeba150 folder, as an InsightFace ``.bin``), the MobileFaceNet teacher as a facekd
artifact and as float / int8 TFLite (``teacher/reference/<hash>/``; int8 calibrated on 100
glint24 faces, as the evaluate stage does with training faces), and prints the two TFLite
models' size and batch-1 latency measured in turns like the evaluate stage's (1 thread).

    python benchmarks/real_eval_inputs.py OUT ../shared/faces \
        ../shared/weights/mobilefacenet_casia_068.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from export.runtime import measure_latencies
from faces.data import load_image, make_pairs, scan_image_folder
from faces.transforms import normalise
from faces.verification_sets import write_bin
from pipelines.core.artifacts import save_model
from pipelines.evaluation.references import teacher_references
from teachers.checkpoint import load_checkpoint_into, sha256_file
from teachers.registry import create_teacher


def main() -> None:
    """Write the .bin and the teacher's TFLite models; print their size and latency."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("faces", type=Path, help="../shared/faces")
    parser.add_argument("checkpoint", type=Path, help="mobilefacenet_casia_068.ckpt")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    index = scan_image_folder(args.faces / "celeba150", min_images=2)
    pairs = make_pairs(index.labels, 3000, 0)
    raw = [(index.paths[i].read_bytes(), index.paths[j].read_bytes()) for i, j, _ in pairs]
    write_bin(args.out / "celeba150_pairs.bin", raw, pairs[:, 2].astype(bool))

    model = create_teacher("mobilefacenet")
    load_checkpoint_into(model, str(args.checkpoint))
    (args.out / "teacher").mkdir(exist_ok=True)
    artifact = save_model(
        args.out / "teacher" / "teacher.pt", "teacher", "mobilefacenet", {}, model
    )
    glint = scan_image_folder(args.faces / "glint24")
    pick = np.linspace(0, len(glint) - 1, 100).astype(int)
    faces = torch.from_numpy(np.stack([load_image(glint.paths[i]) for i in pick]))
    calibration = normalise(faces).numpy()
    paths = teacher_references(artifact, sha256_file(artifact), calibration)
    models = {name: (path.read_bytes(), {"binary": False}) for name, path in paths.items()}
    speeds = measure_latencies(models, threads=1, runs=50, warmup=10, instances=3)
    report = {
        name: {
            "path": str(paths[name]),
            "size_bytes": len(models[name][0]),
            "latency_ms_p50": speeds[name]["latency_ms_p50"],
            "fps": speeds[name]["fps"],
        }
        for name in paths
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
