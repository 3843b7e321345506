"""Training glue for the stages: the data a run works on, the loader, Lightning fitting."""
