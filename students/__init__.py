"""Binarized student models (Brevitas): registry (``create_student``/``list_students``)."""

from students import (  # noqa: F401  (register the zoo)
    binarydensenet,
    binaryfacenet,
    birealface,
    quicknet,
)
from students.registry import create_student, list_students

__all__ = ["create_student", "list_students"]
