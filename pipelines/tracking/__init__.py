"""MLflow: the store and runs, compare rows and the Pareto front, releases and bundles, pyfunc."""
