"""The teacher model registry (timm-style): ``create_teacher``, ``list_teachers``."""

from __future__ import annotations

from typing import Any

from torch import nn

from faces.registry import Registry

TEACHERS = Registry("teacher model")
register_teacher = TEACHERS.register


def create_teacher(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered teacher ``name``; every teacher maps (N,3,112,112) -> (N, D)."""
    return TEACHERS.create(name, **kwargs)


def list_teachers(pattern: str = "*") -> list[str]:
    """Names of the registered teachers matching ``pattern``."""
    return TEACHERS.names(pattern)
