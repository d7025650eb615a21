"""What the hard per-slide time limit costs: each slide in a forkserver child process.

Prints the wall time of an empty job run directly and through the child process (the fixed
cost per slide), and of tiling the same synthetic slides with and without ``--slide-timeout``
(in-process, ``--workers 0``). CPU seconds are the calling process's; the children's are
not counted (they belong to the forkserver), so compare the wall columns.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_slide_timeout.py [--slides 6] [--calls 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _noop(item: int) -> int:
    return item


def _timed(work: object) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    from wsi_mil.cli import main as wsi_mil
    from wsi_mil.synthetic import Region, write_synthetic_slide
    from wsi_mil.time_limit import run_with_time_limit

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slides", type=int, default=6)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        slides = Path(folder) / "slides"
        for index in range(args.slides):
            write_synthetic_slide(
                slides / f"s{index}.svs",
                width=4096,
                height=3072,
                mpp=0.5,
                regions=(Region(1024, 512, 1536, 1024),),
                downsamples=(1, 4, 16),
            )
        for label, extra in (("no limit", []), ("--slide-timeout 600", ["--slide-timeout", "600"])):
            out = Path(folder) / label.replace(" ", "_")
            argv = ["tile", str(slides), "--out", str(out), "--workers", "0", "--quiet", *extra]
            wall, cpu = _timed(lambda argv=argv: wsi_mil(argv))
            print(f"tile {args.slides} slides, {label}: {wall:.2f} s wall, {cpu:.2f} s cpu in this process")
    # the forkserver runs already, with the tiling modules loaded: what a child costs beyond the job
    wall, cpu = _timed(lambda: [run_with_time_limit(_noop, i, seconds=60) for i in range(args.calls)])
    direct, _ = _timed(lambda: [_noop(i) for i in range(args.calls)])
    print(
        f"empty job: {1000 * wall / args.calls:.1f} ms per call in a child (cpu here {1000 * cpu / args.calls:.1f} ms), "
        f"{1e6 * direct / args.calls:.1f} us directly"
    )


if __name__ == "__main__":
    main()
