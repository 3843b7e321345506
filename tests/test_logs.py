"""pipelines.core.logs: other libraries' output to the log file, facekd's own to the terminal."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

from pipelines.core import logs


@pytest.fixture(autouse=True)
def _always_stopped():
    yield
    logs.stop()


def _noise(tag: str) -> None:
    """What libraries do: a Python warning, a log record, a C-level write to descriptor 2."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"{tag} python warning", UserWarning, stacklevel=1)
    logging.getLogger("some.library").warning("%s library log record", tag)
    os.write(2, f"{tag} C-level stderr\n".encode())


def test_library_output_goes_to_the_log_file(capfd: pytest.CaptureFixture[str]) -> None:
    path = logs.start("testcmd")
    _noise("quiet")
    print("facekd's own message", file=logs.terminal())
    print("warning: facekd's own warning", file=sys.stderr)  # by its prefix
    final = logs.stop()
    out, err = capfd.readouterr()
    assert "facekd's own message" in err and "warning: facekd's own warning" in err
    assert "quiet" not in out + err
    text = final.read_text()
    assert final.name == "testcmd.log" and not path.exists()
    for line in ("quiet python warning", "quiet library log record", "quiet C-level stderr"):
        assert line in text
    os.write(2, b"after stop\n")  # descriptor 2 is the terminal again
    assert "after stop" in capfd.readouterr().err


def test_verbose_shows_library_output_on_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    logs.start("testcmd", verbose=True)
    _noise("loud")
    final = logs.stop()
    err = capfd.readouterr().err
    assert "loud python warning" in err and "loud C-level stderr" in err
    assert "loud library log record" in err
    assert "loud library log record" in final.read_text()


def test_log_moves_to_the_run_folder(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    first = logs.start("testcmd")
    _noise("before")
    run_log = logs.to_folder(tmp_path / "runs" / "x")
    assert run_log == tmp_path / "runs" / "x" / "facekd.log" and logs.log_path() == run_log
    assert not first.exists()
    _noise("after")
    assert logs.stop() == run_log
    text = run_log.read_text()
    assert text.startswith("==> facekd") and "before C-level" in text and "after C-level" in text
    assert "before" not in capfd.readouterr().err


def test_no_session_no_redirect(capfd: pytest.CaptureFixture[str]) -> None:
    assert logs.log_path() is None and logs.to_folder("anywhere") is None
    assert logs.stop() is None
    print("plain", file=logs.terminal())
    assert "plain" in capfd.readouterr().err


def test_logs_of_killed_commands_are_removed(facekd_cache: Path) -> None:
    folder = facekd_cache / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    dead = folder / "eval.999999999.log"  # no such process
    alive = folder / f"eval.{os.getppid()}.log"
    dead.write_text("x")
    alive.write_text("y")
    logs.start("testcmd")
    logs.stop()
    assert not dead.exists() and alive.exists()
    alive.unlink()


def test_unwritable_run_folder_keeps_the_current_log(tmp_path: Path) -> None:
    first = logs.start("testcmd")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert logs.to_folder(blocker / "run") is None and logs.log_path() == first
