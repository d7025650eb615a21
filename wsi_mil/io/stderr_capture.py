"""Messages that C libraries write straight to file descriptor 2, captured per slide.

OpenSlide's GLib warnings (``OpenSlide-WARNING **: libtiff warning: ...`` under
``OPENSLIDE_DEBUG=decoding``), a C library's ``fprintf(stderr, ...)``, and the lines that
reading processes started during the slide (DataLoader workers) write to the stderr they
inherit never pass through Python. While :func:`capture_stderr` is open, descriptor 2
points at a temporary file; on exit the lines written in the window are read back and
handed to the caller (the slide's manifest row and log line), not printed.

Python's own output is not swallowed: for the window, ``sys.stderr``, every logging
handler that wrote to it, and :mod:`faulthandler` are pointed at a duplicate of the
original descriptor, so tracebacks, log lines and progress bars still reach the user. An
object that kept the original ``sys.stderr`` from before the window and writes during it (a
progress bar redrawn by tqdm's monitor thread) is the exception: its text is kept with the
slide's lines, not lost.

Threads. Descriptor 2 belongs to the process, not to a thread. wsi-mil's own runners read
one slide per process at a time (Dask workers with one thread each, ``--workers 0`` one
slide after another, the time-limit child), so there a line is the slide's. When
captures overlap in one process (a library caller's threads, a Dask worker with several
threads), one redirect is shared and each capture keeps the lines written during its
window, marked as possibly another slide's: attribution by time, with a note, rather than
serializing slides.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import functools
import io
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Bytes kept per slide (a runaway library cannot fill memory through the manifest).
MAX_BYTES = 1 << 20
#: GLib's ``(process:1234): `` prefix and ``**: 00:37:40.601: `` time stamp: dropped, so repeats count as one.
_GLIB_NOISE = re.compile(r"^\(process:\d+\): |(?<=\*\*: )\d\d:\d\d:\d\d\.\d+: ")
#: Names the temporary files of the windows, followed by the process id (see :func:`left_by`).
FILE_PREFIX = "wsi-mil-stderr-"
#: Seconds after which the file of a process that died inside a window (killed with SIGKILL, with no
#: parent to read it through :func:`left_by`) is removed by the next process that captures.
STALE_S = 600.0
#: Starts the lines a reading process writes for its parent's capture (:func:`write_for_parent`).
CHILD_MARK = "[wsi-mil reader] "
#: Marks the lines of a window that overlapped another slide's in this process.
SHARED_NOTE = " [written while another slide was read in this process; it may be that slide's]"


@dataclass
class _Window:
    start: int
    overlapped: bool = False
    lines: list[str] = field(default_factory=list)


class _Redirect:
    """Descriptor 2 pointed at a temporary file while at least one window is open.

    The duplicate of the original descriptor (``saved_fd``) and its Python stream outlive the
    window, so a handler or progress bar that picked up the stream inside it keeps writing to the
    real stderr afterwards; they are renewed only when descriptor 2 itself has been pointed
    elsewhere since (pytest's capture between two tests does that). The file is named after the
    process (:func:`left_by`): a process that dies inside a window leaves what it wrote there."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: list[_Window] = []
        self.file_fd = -1
        self.file_path = ""
        self.saved_fd = -1
        self.stream: io.TextIOWrapper | None = None
        self.swapped: list[tuple[Any, Any]] = []  # (handler, its stream) or (None, sys.stderr)
        self.faulthandler_was_on = False

    def enter(self) -> _Window | None:
        with self.lock:
            if not self.open and not self._start():
                return None
            window = _Window(start=os.lseek(2, 0, os.SEEK_CUR), overlapped=bool(self.open))
            for other in self.open:
                other.overlapped = True
            self.open.append(window)
            return window

    def exit(self, window: _Window) -> None:
        with self.lock:
            _flush_c_stdio()
            end = os.lseek(2, 0, os.SEEK_CUR)
            data = os.pread(self.file_fd, min(end - window.start, MAX_BYTES), window.start)
            window.lines = _lines(data)
            self.open.remove(window)
            if not self.open:
                self._stop()

    def _start(self) -> bool:
        """Redirect descriptor 2; False (nothing changed) where this process has no usable one."""
        _flush_python()
        _flush_c_stdio()
        if self.saved_fd < 0:  # the first window of this process
            _remove_stale_files()
        try:
            if self.saved_fd < 0 or not _same_file(self.saved_fd, 2):
                self._renew_saved()
            self.file_fd, self.file_path = tempfile.mkstemp(prefix=f"{FILE_PREFIX}{os.getpid()}-", suffix=".txt")
        except OSError as error:
            logger.debug("C-level stderr not captured: %s", error)
            return False
        os.dup2(self.file_fd, 2)
        assert self.stream is not None  # set by _renew_saved
        self._point_python_at(self.stream)
        return True

    def _renew_saved(self) -> None:
        saved = os.dup(2)
        if self.saved_fd >= 0:
            os.close(self.saved_fd)
        self.saved_fd = saved
        self.stream = io.TextIOWrapper(
            io.FileIO(saved, "w", closefd=False),
            encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
            line_buffering=True,
            write_through=True,
        )

    def _stop(self) -> None:
        _flush_python()
        os.dup2(self.saved_fd, 2)
        self._restore_python()
        os.close(self.file_fd)
        with contextlib.suppress(OSError):
            os.unlink(self.file_path)
        self.file_fd, self.file_path = -1, ""

    def _point_python_at(self, stream: io.TextIOWrapper) -> None:
        """Python's writers to descriptor 2 (``sys.stderr``, logging handlers, faulthandler) to ``stream``."""
        targets = {id(s) for s in (sys.stderr, sys.__stderr__) if _writes_to_fd2(s)}
        if _writes_to_fd2(sys.stderr):
            self.swapped.append((None, sys.stderr))
            sys.stderr = stream
        for handler in _stream_handlers():
            if id(handler.stream) in targets:
                self.swapped.append((handler, handler.setStream(stream)))
        self.faulthandler_was_on = faulthandler.is_enabled()
        if self.faulthandler_was_on:
            faulthandler.enable(file=stream)

    def _restore_python(self) -> None:
        for handler, stream in reversed(self.swapped):  # what was pointed elsewhere meanwhile stays there
            if handler is None and sys.stderr is self.stream:
                sys.stderr = stream
            elif handler is not None and handler.stream is self.stream:
                handler.setStream(stream)
        self.swapped.clear()
        if self.faulthandler_was_on:
            faulthandler.enable(file=sys.__stderr__ or sys.stderr)


_REDIRECT = _Redirect()


@contextlib.contextmanager
def capture_stderr() -> Iterator[list[str]]:
    """Collect the lines written to descriptor 2 in this block into the yielded list, filled on exit.

    Each line is ``stderr: <text>``, with :data:`SHARED_NOTE` when another capture was open in this
    process meanwhile. Where the process has no descriptor 2 to redirect, nothing is collected."""
    captured: list[str] = []
    window = _REDIRECT.enter()
    try:
        yield captured
    finally:
        if window is not None:
            _REDIRECT.exit(window)
            note = SHARED_NOTE if window.overlapped else ""
            captured.extend(
                line.removeprefix(CHILD_MARK) + note if line.startswith(CHILD_MARK) else f"stderr: {line}{note}"
                for line in window.lines
            )


def write_for_parent(message: str) -> None:
    """One line on descriptor 2 that a parent's :func:`capture_stderr` keeps as ``message`` (no
    ``stderr:`` prefix): how a reading process (a DataLoader worker) hands its warnings to the slide."""
    text = CHILD_MARK + " ".join(message.split()) + "\n"
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", errors="backslashreplace"))


def left_by(pid: int, *, keep: int = 2000) -> str:
    """What process ``pid`` wrote to its captured stderr before it died inside a window (the last
    ``keep`` characters; the C library's last words before a crash); the files are removed."""
    text = ""
    for path in sorted(Path(tempfile.gettempdir()).glob(f"{FILE_PREFIX}{pid}-*.txt")):
        with contextlib.suppress(OSError):
            text += "\n".join(_lines(path.read_bytes()[-keep:])) + "\n"
            path.unlink()
    return text.strip()[-keep:]


def _remove_stale_files() -> None:
    """Remove the window files of processes that died inside a window more than :data:`STALE_S` ago."""
    now = time.time()
    for path in Path(tempfile.gettempdir()).glob(f"{FILE_PREFIX}*.txt"):
        with contextlib.suppress(OSError, ValueError):
            if now - path.stat().st_mtime > STALE_S and not _alive(int(path.name[len(FILE_PREFIX) :].split("-")[0])):
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _same_file(a: int, b: int) -> bool:
    first, second = os.fstat(a), os.fstat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", errors="backslashreplace")
    return [_GLIB_NOISE.sub("", line).strip() for line in text.splitlines() if line.strip()]


def _writes_to_fd2(stream: Any) -> bool:
    try:
        return stream is not None and stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [
        handler
        for one in loggers
        for handler in getattr(one, "handlers", ())
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]


def _flush_python() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()  # type: ignore[union-attr]


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None)


def _flush_c_stdio() -> None:
    """C's buffered ``stderr``/``stdout`` written out, so a line lands on the right side of a redirect."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().fflush(None)
