"""A quiet terminal: facekd's own lines there, other libraries' logs in a log file.

:func:`start` (the ``facekd`` command line calls it first) sends the process's standard error
to a log file: file descriptor 2, where C++ libraries write (TensorFlow, absl, LCE, XNNPACK),
and ``sys.stderr``, where Python library loggers, warnings and progress bars end up. Python
warnings and log records are also written there with their time and source
(``logging.captureWarnings``). facekd's own messages go to :func:`terminal` (its lines that
start with ``warning:``, ``note:`` or ``facekd:`` reach the terminal even when printed to
``sys.stderr``); standard output (tables, stage lines, progress) is left alone.

The log file is ``<cache>/logs/<command>.log`` (the last invocation's) unless the command has
a run folder: :func:`to_folder` moves what was logged so far to ``<folder>/facekd.log`` and
appends there from then on. With ``verbose`` nothing is redirected: the libraries print to the
terminal as they normally do, and Python log records go to both. :func:`stop` restores the
process (the command line may run inside a test).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from faces.cache import cache_dir

LOG_NAME = "facekd.log"
OWN_PREFIXES = ("warning: ", "note: ", "facekd: ")  # facekd's messages, wherever printed
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _LogStream(io.TextIOBase):
    """``sys.stderr`` while a session runs: writes go to the current log file, so streams that
    libraries keep (a logging handler made at import) follow the log to the run folder.

    facekd's own lines printed to ``sys.stderr`` (starting with one of :data:`OWN_PREFIXES`)
    are also copied to the terminal."""

    def __init__(self, file: TextIO, terminal: TextIO | None = None) -> None:
        self.file = file
        self.terminal = terminal
        self._partial = ""

    def write(self, text: str) -> int:
        written = self.file.write(text)
        if self.terminal is not None:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                if line.startswith(OWN_PREFIXES):
                    self.terminal.write(line + "\n")
        return written

    def flush(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


@dataclass
class _Session:
    command: str
    verbose: bool
    path: Path
    stream: _LogStream  # the log file, as sys.stderr (not verbose) and the logging handler
    terminal: TextIO
    saved_fd: int | None  # the original descriptor 2, while it goes to the log (not verbose)
    saved_stderr: TextIO
    handlers: list[logging.Handler]
    saved_level: int
    argv: list[str]
    moved: bool = False


_session: _Session | None = None


def _open(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115


def _remove_stale(folder: Path) -> None:
    """Logs of commands killed before :func:`stop` (``<command>.<pid>.log``, pid gone)."""
    for path in folder.glob("*.*.log"):
        pid = path.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (PermissionError, OverflowError):  # alive under another user / not a pid
            continue


def _header(file: TextIO, argv: list[str]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    file.write(f"==> {' '.join(['facekd', *argv])} (pid {os.getpid()}, {when})\n")


def _terminal_stream() -> tuple[TextIO, int]:
    """The stream facekd's own messages take, and a saved copy of descriptor 2."""
    with contextlib.suppress(ValueError, OSError):
        sys.stderr.flush()
    saved = os.dup(2)
    try:
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced (a test's capture): keep it
        real = False
    if not real:
        return sys.stderr, saved
    stream = os.fdopen(
        saved,
        "w",
        buffering=1,
        encoding=sys.stderr.encoding or "utf-8",
        errors="backslashreplace",
        closefd=False,
    )
    return stream, saved


def start(command: str, verbose: bool = False, argv: list[str] | None = None) -> Path:
    """Send other libraries' output to the command's log file; returns its path. ``argv``:
    the command line for the log's header (default ``sys.argv[1:]``).

    A file that cannot be written in the cache folder falls back to the temporary folder.
    """
    global _session
    if _session is not None:
        stop()
    try:
        path = cache_dir() / "logs" / f"{command}.{os.getpid()}.log"
        file = _open(path)
        _remove_stale(path.parent)
    except OSError:
        import tempfile

        path = Path(tempfile.gettempdir()) / f"facekd-{command}.{os.getpid()}.log"
        file = _open(path)
    argv = list(sys.argv[1:] if argv is None else argv)
    _header(file, argv)
    stream = _LogStream(file)
    saved_stderr = sys.stderr
    if verbose:
        terminal, saved_fd = sys.stderr, None
    else:
        terminal, saved_fd = _terminal_stream()
        stream.terminal = terminal
        os.dup2(file.fileno(), 2)
        sys.stderr = stream  # type: ignore[assignment]
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream)]
    if verbose:
        handlers.append(logging.StreamHandler(terminal))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    _session = _Session(
        command, verbose, path, stream, terminal, saved_fd, saved_stderr, handlers, root.level, argv
    )
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return path


def terminal() -> TextIO:
    """Where facekd's own messages to standard error go (the terminal, not the log file)."""
    return _session.terminal if _session is not None else sys.stderr


def log_path() -> Path | None:
    """The current log file, or None outside :func:`start` / :func:`stop`."""
    return _session.path if _session is not None else None


def to_folder(folder: str | os.PathLike) -> Path | None:
    """Continue the log in ``<folder>/facekd.log`` (appended), moving what was logged so far;
    returns its path (None outside a session, or when the folder cannot be written)."""
    s = _session
    if s is None:
        return None
    path = Path(folder) / LOG_NAME
    if s.moved and s.path.resolve() == path.resolve():
        return path
    try:
        file = _open(path)
    except OSError:  # a folder that cannot be written: the command itself will say so
        return None
    s.stream.flush()
    if s.moved:
        _header(file, s.argv)
    else:  # the lines logged before the run folder was known
        with contextlib.suppress(OSError):
            file.write(s.path.read_text(encoding="utf-8", errors="backslashreplace"))
    if not s.verbose:
        os.dup2(file.fileno(), 2)
    old, old_path, was_moved = s.stream.file, s.path, s.moved
    s.stream.file, s.path, s.moved = file, path, True
    old.close()
    if not was_moved:
        old_path.unlink(missing_ok=True)
    return path


def stop() -> Path | None:
    """Restore standard error and logging; returns the log file's final path."""
    global _session
    s = _session
    if s is None:
        return None
    _session = None
    logging.captureWarnings(False)
    root = logging.getLogger()
    for handler in s.handlers:
        root.removeHandler(handler)
    root.setLevel(s.saved_level)
    s.stream.flush()
    sys.stderr = s.saved_stderr
    if s.saved_fd is not None:
        with contextlib.suppress(ValueError, OSError):
            s.terminal.flush()
        os.dup2(s.saved_fd, 2)
        os.close(s.saved_fd)
    log_file = s.stream.file
    s.stream.file, s.stream.terminal = s.saved_stderr, None  # kept streams: plain stderr now
    log_file.close()
    if s.moved:
        return s.path
    final = s.path.with_name(f"{s.command}.log")
    try:
        os.replace(s.path, final)
    except OSError:
        return s.path
    return final


def logged_exception(message: str) -> None:
    """Write the exception being handled, with its traceback, to the log file."""
    logging.getLogger("facekd").exception(message)
