"""The student model registry (timm-style): ``create_student``, ``list_students``."""

from __future__ import annotations

from typing import Any

from torch import nn

from faces.registry import Registry

STUDENTS = Registry("student model")
register_student = STUDENTS.register


def create_student(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered student ``name``; ``binary=False`` gives its float twin."""
    return STUDENTS.create(name, **kwargs)


def list_students(pattern: str = "*") -> list[str]:
    """Names of the registered students matching ``pattern``."""
    return STUDENTS.names(pattern)
