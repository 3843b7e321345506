"""Binarized student models (Brevitas): registry (``create_student``/``list_students``)."""

from students import birealface  # noqa: F401  (register the zoo)
from students.registry import create_student, list_students

__all__ = ["create_student", "list_students"]
