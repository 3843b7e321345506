"""Teacher models: registry (``create_teacher``/``list_teachers``), zoo, training."""

from teachers import edgeface, mobilefacenet, vit  # noqa: F401  (register the zoo)
from teachers.registry import create_teacher, list_teachers

__all__ = ["create_teacher", "list_teachers"]
