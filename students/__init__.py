"""Binarized student models (Brevitas): registry (``create_student``/``list_students``)."""

from students import (  # noqa: F401  (register the zoo)
    binary_mobilefacenet,
    binarydensenet,
    binaryfacenet,
    birealface,
    quicknet,
)
from students.binary_mobilefacenet import init_from_teacher
from students.registry import create_student, list_students

__all__ = ["create_student", "init_from_teacher", "list_students"]
