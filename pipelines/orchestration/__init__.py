"""The orchestrator: stages in order, fingerprints, cache and resume, the run summary, ablations."""
