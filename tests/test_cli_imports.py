"""`facekd --help`, `--version` and every `facekd COMMAND --help` answer without importing the
heavy stack (torch, TensorFlow, MLflow, Lightning, ...): it is imported by the command that runs.
Checked on ``sys.modules`` in a fresh interpreter, not on a wall-clock time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "tensorflow",
    "mlflow",
    "pytorch_lightning",
    "lightning",
    "numpy",
    "onnx",
    "onnxruntime",
    "brevitas",
    "timm",
    "larq_compute_engine",
    "matplotlib",
    "pandas",
)

PROBE = """
import contextlib, io, json, sys
from pipelines.cli import COMMANDS, build_parser
argv = json.loads(sys.argv[1])
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    build_parser().parse_args(argv)
heavy = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
print(json.dumps({"printed": out.getvalue(), "heavy": heavy}))
"""


def probe(argv: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def command_words() -> list[str]:
    from pipelines.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_top_level_help_and_version_import_nothing_heavy(argv: list[str]) -> None:
    result = probe(argv)
    assert result["printed"].startswith("usage: facekd" if argv == ["--help"] else "facekd ")
    assert result["heavy"] == []


def test_every_command_help_imports_nothing_heavy() -> None:
    words = command_words()
    assert {"run", "eval", "compare", "release", "privacy", "doctor"} <= set(words)
    for word in words:
        result = probe([word, "--help"])
        assert result["printed"].startswith(f"usage: facekd {word}"), word
        assert result["heavy"] == [], f"facekd {word} --help imported {result['heavy']}"


def test_the_probe_sees_a_heavy_import() -> None:
    # the check itself: importing a command's library does show up in sys.modules
    done = subprocess.run(
        [sys.executable, "-c", "import sys, export.embedders; print('torch' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "True"
