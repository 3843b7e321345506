"""What every part of the orchestrator shares: the pipeline YAML schema, model artifacts,
facekd's log lines."""
