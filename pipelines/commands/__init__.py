"""The verbs of ``facekd``, one module each: parse the arguments, call the library, print.

Every module has ``add_parser(subparsers)``; ``pipelines.cli.COMMANDS`` lists them in the
order of ``facekd --help``. The library they call: ``pipelines`` (orchestrator, ablation,
compare rows, release, profiling, evaluation), ``export`` (embedders, benchmark rows) and
``faces`` (alignment, chunks).
"""
