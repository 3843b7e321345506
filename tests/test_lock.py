"""Two runs on one output folder: the second refuses, the first is unharmed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipelines.orchestration.orchestrator import PipelineBusyError, output_lock


def test_second_holder_is_refused_with_a_clear_message(tmp_path) -> None:
    with (
        output_lock(tmp_path),
        pytest.raises(PipelineBusyError, match="another facekd run is using"),
        output_lock(tmp_path),
    ):
        pass
    with output_lock(tmp_path):  # released afterwards
        pass


def test_lock_is_held_across_processes(tmp_path) -> None:
    code = textwrap.dedent(f"""
        from pipelines.orchestration.orchestrator import output_lock, PipelineBusyError
        try:
            with output_lock({str(tmp_path)!r}):
                print("acquired")
        except PipelineBusyError as e:
            print("busy", e)
    """)
    with output_lock(tmp_path):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        ).stdout
    assert out.startswith("busy")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    ).stdout
    assert out.startswith("acquired")
