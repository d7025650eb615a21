"""A hard per-slide time limit: the slide's job runs in a child process, stopped at the deadline.

The reader's own check (:meth:`wsi_mil.io.base.BaseReader.set_time_limit`) stops a slide
between two reads. A call stuck inside C (a file on a hung network mount, a FIFO, a
decoder in an endless loop) never returns to Python, and a thread cannot be
interrupted; a process can. Children come from a ``forkserver`` that has already
imported the job's module, so each slide costs a fork, not a new interpreter, and no
child inherits the threads of its parent (a Dask worker's event loop, tqdm's monitor).
Used only where a limit is set: without one, jobs run in the calling process as before.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

from wsi_mil.errors import SlideTimeoutError, WsiMilError
from wsi_mil.io.stderr_capture import left_by

logger = logging.getLogger(__name__)

#: Seconds the child is given past the limit, so that the reader's own check reports first when it can.
GRACE_S = 2.0
#: Seconds between asking a stopped child to end (SIGTERM) and killing it (SIGKILL).
STOP_WAIT_S = 2.0


class ChildDiedError(WsiMilError, ChildProcessError):
    """The process working on a slide ended without a result (a crash inside a library)."""


def run_with_time_limit(
    function: Callable[..., Any],
    item: Any,
    *,
    seconds: float,
    preload: Sequence[str] = (),
    limit_key: str = "tiling.slide_timeout",
    **kwargs: Any,
) -> Any:
    """``function(item, **kwargs)`` in a child process; :class:`SlideTimeoutError` when it has not
    returned after ``seconds`` (+ :data:`GRACE_S`), the child stopped. Its exceptions are re-raised here;
    a child that dies without a result (a crash in C) is :class:`ChildDiedError`. ``item`` is named
    by its ``path`` attribute when it has one.

    ``preload``: modules the job imports as it runs (readers, scikit-image...), imported once by the
    forkserver instead of once per child (about 1 s a slide for tiling). It takes effect when this
    process starts its forkserver, that is on the first call. ``limit_key``: the setting the message names."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([function.__module__, *preload])
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(send, function, item, kwargs), daemon=True, name=f"wsi-mil {function.__name__}"
    )
    child.start()
    send.close()  # the child holds the other end: its death reads as end-of-file here
    name = getattr(item, "path", item)
    try:
        if not receive.poll(seconds + GRACE_S):
            _end(child)
            raise SlideTimeoutError(
                f"{name}: stopped after the per-slide time limit of {seconds:g} s ({limit_key}); its "
                "process was stuck inside a library call. The file is pathological, very large, or on a storage "
                "that does not answer; check it, or raise the limit." + _last_words(child.pid)
            )
        try:
            status, value = receive.recv()
        except EOFError:
            child.join(STOP_WAIT_S)
            raise ChildDiedError(
                f"{name}: the process working on this slide died (exit code {child.exitcode}) "
                "without a result; the file probably crashes its reader. Try another "
                "--reader, or check the file." + _last_words(child.pid)
            ) from None
    finally:
        receive.close()
        _stop(child)
    if status == "error":
        raise value
    return value


def _child(send: Any, function: Callable[..., Any], item: Any, kwargs: dict[str, Any]) -> None:
    try:
        result: tuple[str, Any] = ("ok", function(item, **kwargs))
    except Exception as error:  # noqa: BLE001 -- re-raised in the parent
        result = ("error", error)
    try:
        send.send(result)
    except Exception as error:  # noqa: BLE001 -- a result or an exception that does not pickle
        send.send(("error", WsiMilError(f"{getattr(item, 'path', item)}: {type(error).__name__}: {error}")))
    send.close()


def _last_words(pid: int | None) -> str:
    """What the stopped child had written to its captured stderr (a C library's last message), if anything."""
    text = left_by(pid) if pid is not None else ""
    return f" Its last words on stderr: {text}" if text else ""


def _stop(child: Any) -> None:
    """End ``child`` (:func:`_end`) and release it."""
    _end(child)
    child.close()


def _end(child: Any) -> None:
    """End ``child``: at once when it is done, else SIGTERM, then SIGKILL."""
    child.join(0.5 if child.is_alive() else None)
    if child.is_alive():
        child.terminate()
        child.join(STOP_WAIT_S)
    if child.is_alive():
        logger.debug("%s did not end on SIGTERM; killing it", child.name)
        child.kill()
        child.join()
