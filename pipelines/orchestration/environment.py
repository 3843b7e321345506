"""What facekd runs on: versions of its stack, accelerators, tracking store and cache folder."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from faces.cache import ENV as CACHE_ENV
from faces.cache import cache_dir

# (label, distribution name): the stack a pipeline runs through, in the order of its stages
STACK = (
    ("torch", "torch"),
    ("PyTorch Lightning", "pytorch-lightning"),
    ("timm", "timm"),
    ("Brevitas", "brevitas"),
    ("ONNX", "onnx"),
    ("ONNX Runtime", "onnxruntime"),
    ("onnx2tf", "onnx2tf"),
    ("onnx-tf", "onnx-tf"),
    ("TensorFlow", "tensorflow"),
    ("LCE", "larq-compute-engine"),
    ("MLflow", "mlflow"),
    ("NumPy", "numpy"),
)


@dataclass(frozen=True)
class Check:
    """One line of the report: what, its state, and whether it is a problem (``ok`` False)."""

    name: str
    value: str
    ok: bool = True


def package_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def facekd_version() -> str:
    return package_version("facekd") or "unknown (not installed: pip install -e .)"


def stack_checks() -> list[Check]:
    """facekd, Python and every package of the stack; a missing one is a problem."""
    checks = [
        Check("facekd", facekd_version()),
        Check("Python", f"{platform.python_version()} ({platform.machine()})"),
    ]
    for label, dist in STACK:
        found = package_version(dist)
        checks.append(Check(label, found or "not installed", found is not None))
    return checks


def cuda_check() -> Check:
    """Whether torch sees a CUDA device (absent is not a problem: facekd runs on CPUs)."""
    import torch

    built = torch.version.cuda
    if not torch.cuda.is_available():
        detail = f"torch built for CUDA {built}" if built else "a CPU-only torch build"
        return Check("CUDA", f"not available ({detail}; training runs on CPU)")
    count = torch.cuda.device_count()
    names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(count)}))
    return Check("CUDA", f"{count} device(s): {names} (CUDA {built})")


def dali_check() -> Check:
    """NVIDIA DALI (GPU image decoding), optional."""
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name.startswith("nvidia-dali"):
            return Check("NVIDIA DALI", f"{dist.version} ({name})")
    return Check("NVIDIA DALI", "not installed (optional)")


def tracking_check() -> Check:
    """The MLflow tracking URI facekd logs to, and where it comes from."""
    from pipelines.tracking.runs import tracking_uri

    uri = tracking_uri(create=False)
    source = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "default"
    return Check("tracking URI", f"{uri} ({source})")


def cache_check() -> Check:
    """facekd's cache folder (manifests, logs) and whether it can be written."""
    folder = cache_dir()
    source = CACHE_ENV if os.environ.get(CACHE_ENV) else "default"
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
    writable = os.access(existing, os.W_OK)
    state = "" if writable else ", not writable"
    return Check("cache folder", f"{folder} ({source}{state})", writable)


def report() -> list[Check]:
    """Everything ``facekd doctor`` shows, in order."""
    return [*stack_checks(), cuda_check(), dali_check(), tracking_check(), cache_check()]
