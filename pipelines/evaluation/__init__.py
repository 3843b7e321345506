"""Evaluation: a run's verification sets, models scored on them, reports, reference models,
model profiles."""
