"""What a user would deploy instead of a binary student: the teacher as float and int8 TFLite.

The evaluate stage measures these beside the student (accuracy on every set, latency in turns
with the student's interpreters, size), so the final table, ``facekd compare`` and the Pareto
plot show whether a 1-bit student beats the int8 teacher one would otherwise ship. The
conversions are cached beside the teacher artifact, keyed by its hash: pipelines that share a
teacher (an ablation) convert it once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

REFERENCES = {
    "teacher_float": "teacher, float TFLite (XNNPACK)",
    "teacher_int8": "teacher, int8 TFLite (post-training quantization)",
}
"""Reference model name -> what it is (metric prefix ``reference.<name>.``)."""


def teacher_references(
    teacher_artifact: Path,
    teacher_hash: str,
    calibration: np.ndarray,
    converter: str = "onnx2tf",
) -> dict[str, Path]:
    """``teacher_float.tflite`` and ``teacher_int8.tflite`` of a teacher artifact.

    ``calibration``: normalised (N, 3, 112, 112) faces, the int8 representative dataset.
    Built in a temporary folder and renamed into ``<teacher dir>/reference/<hash>``, so a
    killed run never leaves half a cache entry.
    """
    from export.teacher_export import export_teacher
    from export.tflite import convert_int8, save_flatbuffer
    from pipelines.core.artifacts import load_model

    cache = teacher_artifact.parent / "reference" / teacher_hash[:16]
    paths = {name: cache / f"{name}.tflite" for name in REFERENCES}
    if all(p.is_file() for p in paths.values()):
        return paths
    cache.parent.mkdir(parents=True, exist_ok=True)
    teacher, _ = load_model(teacher_artifact)
    probe = torch.from_numpy(np.ascontiguousarray(calibration[:4], dtype=np.float32))
    with tempfile.TemporaryDirectory(prefix=".building-", dir=cache.parent) as tmp:
        work = Path(tmp)
        exported = export_teacher(teacher.eval(), work, converter, probe)
        if exported.tflite_cosine_min < 0.99:
            raise RuntimeError(
                f"the teacher's float TFLite disagrees with PyTorch (cosine "
                f"{exported.tflite_cosine_min:.4f} on calibration faces)"
            )
        out = work / "out"
        out.mkdir()
        shutil.copy(exported.tflite, out / "teacher_float.tflite")
        int8 = convert_int8(work / "saved_model_teacher", calibration)
        save_flatbuffer(int8, out / "teacher_int8.tflite")
        if cache.exists():  # another process finished first
            shutil.rmtree(cache)
        out.rename(cache)
    return paths
