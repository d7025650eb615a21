"""One writer per run folder: ``RUN_DIR/.wsi-mil.lock``, an advisory ``flock`` held while a stage writes.

A second process that starts a writing stage on the same folder (``tile --overwrite``
twice, ``extract`` while ``wsi-mil run`` tiles) stops at once with
:class:`RunLockedError`, naming the process that holds the folder; it never touches
that process's partial files. The lock belongs to the open file, so the kernel
releases it when its process dies (``kill -9`` included) and a killed run never
leaves a stale lock behind. Dask workers write under their driver's lock. The lock is
re-entrant within a process: ``wsi-mil run`` holds it and calls the stages, which take
it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from wsi_mil.errors import WsiMilError
from wsi_mil.run_layout import RunLayout

logger = logging.getLogger(__name__)

#: lock file (resolved) -> (open handle, depth) of the locks this process holds
_HELD: dict[Path, tuple[IO[str], int]] = {}


class RunLockedError(WsiMilError, BlockingIOError):
    """Another process is writing into the same run folder."""


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except ValueError:
        info = {}
    if not info:
        return "another process"
    return f"process {info.get('pid')} on {info.get('host')} (`{info.get('command')}`, since {info.get('started')})"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str = "") -> Iterator[Path]:
    """Hold ``RUN_DIR``'s lock for the block; :class:`RunLockedError` at once if another process holds it."""
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = RunLayout(run_dir).lock.resolve()
    if path in _HELD:
        handle, depth = _HELD[path]
        _HELD[path] = (handle, depth + 1)
    else:
        handle = path.open("a+")  # never truncate: the holder's note stays readable
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            raise RunLockedError(
                f"{run_dir} is in use by {holder}. Two runs writing one folder would delete each other's "
                "partial files; wait for it to finish (or stop it), or write to another run folder."
            ) from None
        handle.seek(0)
        handle.truncate()
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command or " ".join(sys.argv[:3]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        handle.write(json.dumps(note))
        handle.flush()
        _HELD[path] = (handle, 1)
    try:
        yield path
    finally:
        handle, depth = _HELD[path]
        if depth > 1:
            _HELD[path] = (handle, depth - 1)
        else:
            del _HELD[path]
            handle.close()  # closing the file releases the flock
