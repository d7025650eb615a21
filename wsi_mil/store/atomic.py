"""Write to a temporary name beside the target and rename on success.

A file or folder under its final name was complete when it got that name. That it is
still complete (not truncated or half-copied since) is what the completeness markers
check (:mod:`wsi_mil.store.complete`: bags, feature and score files). Partial
outputs of a killed run keep a ``.partial-<pid>`` name and are removed on the next run;
a partial whose process is still alive on this machine belongs to another writer and
is left alone (a second process never deletes the first one's work).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

PARTIAL_TAG = ".partial-"


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{PARTIAL_TAG}{os.getpid()}")


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours: left by an earlier attempt in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except (OverflowError, ValueError):
        return False
    return True


def clean_partials(final: Path) -> None:
    """Remove what killed runs left behind for ``final`` (partials of live processes stay)."""
    for stale in final.parent.glob(f".{final.name}{PARTIAL_TAG}*"):
        owner = stale.name.rsplit(PARTIAL_TAG, 1)[-1]
        if owner.isdigit() and _process_alive(int(owner)):
            continue
        remove_path(stale)


def commit(temporary: Path, final: Path) -> None:
    """Move a finished temporary file or folder to its final name, replacing any old one."""
    if temporary.is_dir():
        if final.exists():
            trash = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, trash)
            os.replace(temporary, final)
            remove_path(trash)
        else:
            os.replace(temporary, final)
    else:
        os.replace(temporary, final)


@contextlib.contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_partials(final)
    temporary = partial_path(final)
    try:
        yield temporary
    except BaseException:
        remove_path(temporary)
        raise
    commit(temporary, final)
