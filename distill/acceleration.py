"""Faster student training on CPUs: bf16 autocast where the CPU computes bf16 natively,
channels-last tensors, and ``torch.compile`` of the student's training step.

Measured side by side by ``benchmarks/train_speed.py`` (figures in docs/performance.md).
Each switch is a key of ``distill.train`` (``precision``, ``channels_last``, ``compile``); their
``auto`` settings turn on only what that benchmark found faster, and only where the hardware
and toolchain can do it: bf16 on CPUs with AMX or AVX-512-BF16 (others emulate it, slower than
fp32), ``torch.compile`` where a C++ compiler exists and the run is long enough to repay the
compilation (about a minute on one core).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# CPU flags of native bf16 arithmetic (Linux /proc/cpuinfo names)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# planned steps from which ``compile: auto`` compiles: about a minute of compilation on one
# core against 0.2-0.4 s saved per step of 64 (benchmarks/train_speed.py)
COMPILE_MIN_STEPS = 300
# students whose compiled step benchmarks/train_speed.py measured faster than the eager bf16
# step (BiRealFace 1.7x; QuickNet-small's was 0.9x, so it stays eager unless compile: true)
COMPILE_FASTER = frozenset({"birealface"})


@functools.lru_cache(maxsize=1)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (empty where the system does not list them)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AMX or AVX-512-BF16), not emulated."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def resolve_precision(setting: str, distillation: bool, cuda: bool | None = None) -> str:
    """Lightning's precision for ``train.precision``; ``auto``: ``16-mixed`` on a GPU,
    ``bf16-mixed`` for distillation on a CPU with native bf16, otherwise ``32-true``."""
    if setting != "auto":
        return setting
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        return "16-mixed"
    return "bf16-mixed" if distillation and cpu_has_native_bf16() else "32-true"


def compiler_available() -> bool:
    """Whether ``torch.compile``'s CPU backend can build its kernels (a C++ compiler)."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


def resolve_compile(setting: bool | str, planned_steps: int, student: str) -> bool:
    """``train.compile``: ``true``/``false`` as given (``true`` without a C++ compiler is a
    warning and eager training); ``auto`` compiles a student of ``COMPILE_FASTER`` from
    ``COMPILE_MIN_STEPS`` planned steps."""
    if setting == "auto":
        return (
            student in COMPILE_FASTER
            and planned_steps >= COMPILE_MIN_STEPS
            and compiler_available()
        )
    if setting and not compiler_available():
        warnings.warn(
            "distill.train.compile: true, but no C++ compiler (g++, clang++) was found for "
            "torch.compile; training eager",
            stacklevel=2,
        )
        return False
    return bool(setting)


class CompiledForward:
    """The student's forward for training steps: compiled on first use, eager if compiling
    fails (the reason is printed once and training goes on).

    Held outside the module tree, so the student's state dict, checkpoints and export see
    the plain student. Evaluation calls the student itself (eager, eval mode).
    """

    def __init__(self, model: nn.Module, log: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.log = log or (lambda m: print(m, flush=True))
        self.compiled: Any = None
        self.failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.model(x)
        if self.compiled is None:
            self.compiled = torch.compile(self.model)
        try:
            return self.compiled(x)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
            self.failed = True
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            self.log(
                f"note: torch.compile of the student failed ({type(exc).__name__}: "
                f"{first}); training eager"
            )
            return self.model(x)
