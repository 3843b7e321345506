"""Size and cost of any registered teacher or student at 112x112 (``facekd profile NAME``)."""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch import nn

from pipelines.core.config import ConfigError


def count_flops(model: nn.Module, size: int = 112) -> int:
    """FLOPs of one image (multiply and add counted separately: 2 per MAC), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def profile_model(name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """``params``, ``flops``, ``binary_macs``, ``float_macs``, ``size_bytes`` of a model.

    Students are exported to an LCE flatbuffer (random weights: the structure is what counts)
    and counted there: 1-bit MACs of ``LceBconv2d``, 32-bit MACs of the float layers, the
    flatbuffer's bytes; ``flops`` is that of the float twin. Teachers are float: their MACs are
    half their FLOPs, ``size_bytes`` the fp32 parameters and buffers.
    """
    from students.registry import STUDENTS, create_student
    from teachers.registry import TEACHERS, create_teacher

    args = dict(args or {})
    if name in TEACHERS:
        model = create_teacher(name, **args)
        flops = count_flops(model)
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return {
            "name": name,
            "kind": "teacher",
            "params": sum(p.numel() for p in model.parameters()),
            "flops": flops,
            "binary_macs": 0,
            "float_macs": flops // 2,
            "size_bytes": size,
        }
    if name in STUDENTS:
        from export.student_export import export_student
        from export.tflite import flatbuffer_macs

        student = create_student(name, **args).eval()
        twin = create_student(name, binary=False, **args).eval()
        twin.load_state_dict(student.state_dict())
        with tempfile.TemporaryDirectory() as tmp:
            result = export_student(
                student, twin, torch.randn(2, 3, 112, 112), tmp, allow_partial=True
            )
            flatbuffer = open(result.lce_tflite, "rb").read()  # noqa: SIM115
        return {
            "name": name,
            "kind": "student",
            "params": sum(p.numel() for p in student.parameters()),
            "flops": count_flops(twin),
            **flatbuffer_macs(flatbuffer),
            "size_bytes": len(flatbuffer),
            "bconv_coverage": result.metrics["export.bconv_coverage"],
        }
    known = ", ".join([*TEACHERS.names(), *STUDENTS.names()])
    raise ConfigError(f"unknown model {name!r}; registered: {known}")
