"""Progress of a batch of slides: slides done of total, patches done, failures.

On a terminal a tqdm bar; otherwise (a log file, a batch job) INFO log lines at every
tenth of the slides and, while slides are running, at least every ``interval`` seconds,
so a long stage never looks hung in a log.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Longest silence, in seconds, between log lines of a running batch when not on a terminal.
LOG_INTERVAL_S = 60.0


def on_a_terminal() -> bool:
    """Whether progress bars can redraw in place (stderr is a TTY)."""
    return sys.stderr.isatty()


def count_patches(result: Any) -> int:
    """Patches of one task's result: a manifest record, or a list of them (one per bag set)."""
    records: Iterable[Any] = result if isinstance(result, (list, tuple)) else [result]
    total = 0
    for record in records:
        if isinstance(record, dict) and record.get("status") in ("done", "skipped"):
            try:
                total += int(record.get("n_patches") or 0)
            except (TypeError, ValueError):
                continue
    return total


def is_failure(result: Any) -> bool:
    records: Iterable[Any] = result if isinstance(result, (list, tuple)) else [result]
    return any(isinstance(record, dict) and record.get("status") == "failed" for record in records)


class SlideProgress:
    """Counts finished slides of a batch and shows them: a bar on a terminal, log lines elsewhere.

    ``update(result)`` once per finished slide (``None`` with ``failed=True`` for a task that
    crashed); ``close()`` at the end. ``enabled=False`` (``--quiet``) shows nothing.
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        enabled: bool = True,
        interval: float | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.total, self.desc = total, desc
        self.done = self.failed = self.patches = 0
        self.started = self._last_line = time.monotonic()
        self._next_step = 1  # the next tenth of the slides that earns a log line
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar: Any = None
        self._thread: threading.Thread | None = None
        terminal = on_a_terminal() if terminal is None else terminal
        if not enabled or total == 0:
            return
        if terminal:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="slide", file=sys.stderr)
            return
        interval = LOG_INTERVAL_S if interval is None else interval
        logger.info("%s: %d slide(s) to do", desc, total)
        self._thread = threading.Thread(target=self._heartbeat, args=(interval,), name=f"{desc}-progress", daemon=True)
        self._thread.start()

    def update(self, result: Any, *, failed: bool = False) -> None:
        with self._lock:
            self.done += 1
            self.failed += int(failed or is_failure(result))
            self.patches += count_patches(result)
            if self._bar is not None:
                self._bar.set_postfix_str(f"{self.patches:,} patches, {self.failed} failed", refresh=False)
                self._bar.update()
            elif self._thread is not None and self.done * 10 >= self._next_step * self.total:
                while self.done * 10 >= self._next_step * self.total:
                    self._next_step += 1
                self._log()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        text = (
            f"{self.desc}: {self.done}/{self.total} slides ({100 * self.done // max(self.total, 1)}%), "
            f"{self.patches:,} patches, {self.failed} failed, {_duration(elapsed)} elapsed"
        )
        if 0 < self.done < self.total:
            text += f", about {_duration(elapsed / self.done * (self.total - self.done))} left"
        return text

    def _log(self) -> None:
        self._last_line = time.monotonic()
        logger.info("%s", self.line())

    def _heartbeat(self, interval: float) -> None:
        while not self._stop.wait(min(interval, 1.0)):
            with self._lock:
                if self.done < self.total and time.monotonic() - self._last_line >= interval:
                    self._log()


def _duration(elapsed: float) -> str:
    seconds = round(elapsed)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
