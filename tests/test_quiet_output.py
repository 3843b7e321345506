"""The demo pipeline's command line prints facekd's own lines only; the libraries' logs and
warnings (TensorFlow, absl, torch, Lightning, Brevitas, MLflow) go to <output_dir>/facekd.log.

facekd's own lines are exactly:

* the shapes in ``OWN`` (stage start / done / skipped, MLflow run, progress lines, facekd's
  ``warning:`` / ``note:`` lines, the command that opens the MLflow UI), and blank lines;
* the lines of the summary table, as :func:`pipelines.orchestration.summary.summary_table`
  renders it from the run's stage records.

Any other line on standard output or standard error fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core.config import load_config
from pipelines.orchestration.orchestrator import Orchestrator
from pipelines.orchestration.summary import summary_table

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STAGE = r"\[(teacher|distill|export|evaluate)\]"
OWN = [
    re.compile(p)
    for p in (
        r"MLflow: \S+ run [0-9a-f]{32}( \(resumed\))?",
        r"MLflow: run [0-9a-f]{32} of a killed process marked KILLED",
        rf"{STAGE} (running|resuming) \.\.\.",
        rf"{STAGE} done in \d+ s",
        rf"{STAGE} up to date( \(fingerprint [0-9a-f]+\))?, skipped",
        rf"{STAGE} epoch \d+/\d+, step \d+(/\d+)?: \d+ images/s, loss (\d+\.\d{{4}}|-), "
        r"ETA (\d+ s|\d+ min \d+ s|\d+ h \d+ min|\?)",
        r"nothing to do: all \d+ selected stage\(s\) are up to date \(use --force to re-run\)",
        r"resuming (teacher|distill) from \S+ \(.+\)",
        r"continuing the teacher's distillation targets at image \d+ of \d+",
        r"(warning|note): .+",
        r"Browse the runs: mlflow ui --backend-store-uri \S+",
    )
]
# the demo, cut down to run in well under a minute
FAST = [
    "teacher.train.epochs=1",
    "teacher.train.batch_size=16",
    "distill.train.epochs=1",
    "distill.train.batch_size=16",
    "distill.args={width: 32, depths: [1]}",
    "data.synthetic.identities=12",
    "data.synthetic.images_per_identity=6",
    "data.eval_pairs=40",
    "export.probe_images=4",
    "evaluate.runs=3",
    "evaluate.warmup=1",
    "evaluate.instances=1",
    "evaluate.teacher_tflite=false",  # two more conversions through the same converter
]


def foreign_lines(text: str, table: str) -> list[str]:
    """The lines of ``text`` that are not facekd's own (see the module docstring)."""
    table_lines = set(table.splitlines())
    return [
        line
        for line in text.splitlines()
        if line.strip() and line not in table_lines and not any(p.fullmatch(line) for p in OWN)
    ]


def test_own_lines_recognised() -> None:
    table = "a  b\n-  -\nx  1"
    own = "\n".join(
        [
            "[teacher] running ...",
            "",
            "[distill] epoch 1/2, step 3/6: 25 images/s, loss 0.8918, ETA 1 min 4 s",
            "warning: skipped: cannot read image x.jpg",
        ]
    )
    assert foreign_lines(f"{own}\n{table}", table) == []
    leaked = [
        "W0000 00:00:1796193614.742571    8499 computation_placer.cc:177] computation placer",
        "/x/pytorch_lightning/loops/fit_loop.py:538: Found 105 module(s) in eval mode",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    ]
    assert foreign_lines("\n".join(leaked), table) == leaked


def test_demo_prints_only_facekd_lines(tmp_path: Path) -> None:
    out_dir = tmp_path / "runs" / "demo"
    sets = ["--set", f"pipeline.output_dir={out_dir}"]
    for item in FAST:
        sets += ["--set", item]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONWARNINGS": "default",  # every warning is shown: none may reach the terminal
    }
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the libraries as loud as a user's shell has them
    command = [sys.executable, "-m", "pipelines.cli", "run", str(ROOT / "pipelines/demo.yaml")]
    proc = subprocess.run(
        command + sets, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = load_config(ROOT / "pipelines/demo.yaml", sets[1::2])
    orch = Orchestrator(config)
    table = summary_table(orch.records(), orch.data.eval_names)
    assert "[evaluate] done in" in proc.stdout and table.splitlines()[0] in proc.stdout
    assert foreign_lines(proc.stdout, table) == []
    assert foreign_lines(proc.stderr, table) == []
    assert re.search(r"\[distill\] epoch 1/1, step 3/3: ", proc.stdout)  # off a terminal
    log = (out_dir / "facekd.log").read_text()
    assert log.startswith("==> facekd run") and "TensorFlow Lite" in log
