"""Shared plumbing of the side-by-side benchmarks against CLAM's own code (bench_clam_*.py).

CLAM's sources are never part of this repository: they are found at ``$WSI_MIL_CLAM_DIR``
(default ``../shared/anchors/CLAM`` beside the repository) and run by a separate
interpreter with CLAM's dependencies (``--clam-python`` or ``$WSI_MIL_CLAM_PYTHON``), the
same torch on both sides. Each side runs in its own process (the same script with
``--worker``), which prints one JSON line; CPU seconds are the process's user + system
time plus that of its reaped children (CLAM's patching uses a multiprocessing Pool).

Making a CLAM interpreter here (see ``../shared/anchors/README.md``)::

    python -m venv /tmp/clam-venv
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/clam-venv/lib/python3.11/site-packages/project.pth
    /tmp/clam-venv/bin/pip install "pandas<3"
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Worker processes run with one thread everywhere, as the issue asks (same on both sides).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def clam_dir() -> Path:
    return Path(os.environ.get("WSI_MIL_CLAM_DIR", ROOT.parent / "shared" / "anchors" / "CLAM")).resolve()


def clam_python(given: str | None) -> str | None:
    return given or os.environ.get("WSI_MIL_CLAM_PYTHON")


def require_clam(given_python: str | None, needed: Sequence[str]) -> str:
    """The CLAM interpreter; exits with a clear 'skipped' message (status 0) when CLAM cannot run."""
    folder = clam_dir()
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        sys.exit(
            print(
                f"SKIPPED: CLAM's sources are not at {folder} (missing {', '.join(missing)}); "
                "set WSI_MIL_CLAM_DIR to a checkout of mahmoodlab/CLAM"
            )
            or 0
        )
    python = clam_python(given_python)
    if python is None or not Path(python).exists():
        sys.exit(
            print(
                "SKIPPED: no interpreter with CLAM's dependencies; pass --clam-python or set "
                "WSI_MIL_CLAM_PYTHON (see bench/clam_common.py for a two-line set-up)"
            )
            or 0
        )
    return python


def add_clam_to_path() -> Path:
    """In a CLAM worker: make CLAM's top-level packages (wsi_core, models, utils...) importable."""
    folder = clam_dir()
    sys.path.insert(0, str(folder))
    return folder


def cpu_seconds() -> float:
    """User + system CPU of this process and of its reaped children."""
    reap_children()
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reap_children(timeout_s: float = 10.0) -> None:
    """Join finished multiprocessing children (a closed Pool's workers), so their CPU is counted."""
    deadline = time.monotonic() + timeout_s
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.01)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """CPU and wall seconds since the last ``lap()``."""

    def __init__(self) -> None:
        self.cpu, self.wall = cpu_seconds(), time.perf_counter()

    def lap(self) -> dict[str, float]:
        cpu, wall = cpu_seconds(), time.perf_counter()
        out = {"cpu_s": round(cpu - self.cpu, 4), "wall_s": round(wall - self.wall, 4)}
        self.cpu, self.wall = cpu, wall
        return out


def run_worker(python: str, script: Path, args: Sequence[str], *, pythonpath: str = "") -> dict[str, Any]:
    """Run ``script --worker ...`` with ``python`` and return the JSON of its last output line."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": pythonpath}
    done = subprocess.run([python, str(script), *args], check=False, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(
            f"worker failed ({done.returncode}): {python} {script.name} {' '.join(args)}\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def emit(result: dict[str, Any]) -> None:
    """A worker's result: one JSON line on the real stdout (the libraries' prints may precede it)."""
    sys.__stdout__.write(json.dumps(result) + "\n")
    sys.__stdout__.flush()


def load_note() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def bench_parser(doc: str, *worker_options: str) -> argparse.ArgumentParser:
    """The options every side-by-side benchmark takes, and the hidden ones of its worker processes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--clam-python", help="interpreter with CLAM's dependencies (or $WSI_MIL_CLAM_PYTHON)")
    parser.add_argument("--worker", choices=("ours", "clam"), help=argparse.SUPPRESS)
    for option in ("--out", *worker_options):
        parser.add_argument(option, type=Path, help=argparse.SUPPRESS)
    return parser
