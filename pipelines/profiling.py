"""``facekd profile NAME``: size and cost of any registered teacher or student at 112x112."""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

import torch
from torch import nn

from pipelines.config import ConfigError, apply_override


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


def _cmd_profile(args: argparse.Namespace) -> int:
    model_args: dict[str, Any] = {}
    for assignment in args.arg:
        apply_override(model_args, assignment)
    result = profile_model(args.name, model_args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            shown = f"{value:,}" if isinstance(value, int) else value
            print(f"{key:14s} {shown}")
    return 0


def add_profile_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="params, FLOPs, 1-bit/32-bit MACs and size of a model")
    p.add_argument("name", help="registered teacher or student, e.g. edgeface_xs_gamma_06")
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model argument (repeatable), e.g. --arg width=32",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_profile)
