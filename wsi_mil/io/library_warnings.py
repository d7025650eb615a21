"""Warnings of the slide libraries, captured per slide instead of printed raw.

tifffile, tiffslide, Pillow and imagecodecs report oddities of a file through
``logging`` or ``warnings`` (``shaped series shape does not match page shape``,
``DecompressionBombWarning``...). Printed raw, they name no slide and interleave
between parallel workers. Inside :func:`capture_library_warnings` they are collected
instead, and the caller attaches them to the slide's manifest row and log line. So are
the lines C libraries write straight to the process's stderr (file descriptor 2), through
:func:`wsi_mil.io.stderr_capture.capture_stderr` (read its notes on threads).
libjpeg warnings inside OpenSlide surface as read errors (with the tile's position);
imagecodecs (tiffslide) decodes such tiles without a word.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from wsi_mil.io.stderr_capture import capture_stderr, write_for_parent

#: Loggers of the libraries that read slides.
LIBRARY_LOGGERS = ("tifffile", "tiffslide", "PIL", "imagecodecs", "openslide", "pydicom")
#: Warnings about code rather than the slide, left to Python's usual filters.
DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning, ResourceWarning)
#: Distinct messages kept per slide, and characters per message.
KEEP, WIDTH = 5, 200

logger = logging.getLogger(__name__)


class _Collect(logging.Handler):
    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink(f"{record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 -- a malformed log call must not fail the slide
            self.handleError(record)


@contextlib.contextmanager
def capture_library_warnings() -> Iterator[list[str]]:
    """Collect the libraries' warnings (logging, ``warnings`` and lines written to descriptor 2) into
    the yielded list, filled on exit."""
    with capture_stderr() as from_c, _capture_python() as captured:
        yield captured
    captured.extend(from_c)


@contextlib.contextmanager
def _capture_python() -> Iterator[list[str]]:
    captured: list[str] = []
    saved = _route_library_loggers(_Collect(captured.append))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield captured
    finally:
        for library_logger, handlers, propagate in saved:
            library_logger.handlers = handlers
            library_logger.propagate = propagate
        for caught_warning in caught:
            if issubclass(caught_warning.category, DEVELOPER_WARNINGS):  # about code, not the slide: as usual
                warnings.warn_explicit(
                    caught_warning.message, caught_warning.category, caught_warning.filename, caught_warning.lineno
                )
            else:
                captured.append(f"{caught_warning.category.__name__}: {caught_warning.message}")


def report_to_parent() -> None:
    """In a reading process (a DataLoader worker) started inside a parent's capture: the libraries'
    warnings go to descriptor 2 as lines that the parent's capture keeps for the slide.

    A forked worker inherits the parent's collecting handler and ``warnings`` recorder, whose lists
    are copies that nobody reads: without this, the worker's warnings were lost."""
    _route_library_loggers(_Collect(write_for_parent))
    usual = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DEVELOPER_WARNINGS):  # about code, not the slide: as usual
            usual(message, category, *args, **kwargs)
        else:
            write_for_parent(f"{category.__name__}: {message}")

    warnings.showwarning = show


def _route_library_loggers(handler: logging.Handler) -> list[tuple[logging.Logger, list[logging.Handler], bool]]:
    """The libraries' loggers to ``handler`` alone; returns what to restore."""
    saved = []
    for name in LIBRARY_LOGGERS:
        library_logger = logging.getLogger(name)
        saved.append((library_logger, library_logger.handlers, library_logger.propagate))
        library_logger.handlers = [handler]
        library_logger.propagate = False
    return saved


def summarize_warnings(messages: list[str]) -> str:
    """One line: distinct messages in first-seen order, repeats counted, at most ``KEEP``."""
    counts = Counter(" ".join(m.split())[:WIDTH] for m in messages)
    parts = [f"{text} (x{n})" if n > 1 else text for text, n in counts.items()]
    more = f"; and {len(parts) - KEEP} other(s)" if len(parts) > KEEP else ""
    return "; ".join(parts[:KEEP]) + more


def attach_warnings(records: Sequence[dict[str, Any]], captured: list[str], *, slide_id: str) -> list[dict[str, Any]]:
    """``records`` with the slide's captured warnings in their ``warnings`` column, logged once
    naming the slide; unchanged when nothing was captured."""
    if not captured:
        return list(records)
    summary = summarize_warnings(captured)
    logger.warning("%s: library warnings: %s", slide_id, summary)
    return [{**record, "warnings": summary} for record in records]
