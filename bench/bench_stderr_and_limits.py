"""Hardening, measured: what the per-slide stderr capture costs, and what one
pathological level-0 tile (passes tiling, decoded by extraction) costs with and without
``extract.slide_timeout``.

1. ``capture_library_warnings`` opened and closed ``--windows`` times (descriptor 2 redirected
   and restored each time), against the Python-only capture it wraps.
2. One tile read through tiffslide from slides whose level-0 JPEG tiles claim ``--claims``
   pixels a side (tests/test_stage_time_limits.py writes them): wall, CPU, peak RSS of a child.
3. ``wsi-mil extract`` of the first claim's slide (35 patches) without a limit and with ``--slide-timeout LIMIT``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_stderr_and_limits.py [--windows 2000] [--claims 16000 20000] [--limit 8]
"""

from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_slide_timeout import _timed  # noqa: E402 -- wall and CPU seconds of one call

READ_ONE_TILE = """
import resource, sys, time, tiffslide
slide = tiffslide.TiffSlide(sys.argv[1])
wall, cpu = time.perf_counter(), time.process_time()
try:
    slide.read_region((256, 256), 0, (256, 256))
except Exception as error:
    outcome = type(error).__name__
else:
    outcome = "read"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{time.perf_counter() - wall:.2f} s wall, {time.process_time() - cpu:.2f} s cpu, peak {peak:.0f} MB, {outcome}")
"""


def main() -> None:
    from tests.test_stage_time_limits import _slow_tiles
    from wsi_mil.cli import main as wsi_mil
    from wsi_mil.io import library_warnings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--claims", type=int, nargs="+", default=[16000])
    parser.add_argument("--limit", type=float, default=8.0)
    args = parser.parse_args()

    def windows(capture: object) -> None:
        for _ in range(args.windows):
            with capture():  # type: ignore[operator]
                pass

    for label, capture in (
        ("python only", library_warnings._capture_python),
        ("with descriptor 2", library_warnings.capture_library_warnings),
    ):
        wall, cpu = _timed(lambda capture=capture: windows(capture))
        print(
            f"capture window, {label}: {1e6 * wall / args.windows:.0f} us wall, {1e6 * cpu / args.windows:.0f} us cpu"
        )

    with tempfile.TemporaryDirectory() as folder:
        for claim in args.claims:
            path = _slow_tiles(Path(folder) / f"claim{claim}" / "slow.svs", claim=claim)
            done = subprocess.run([sys.executable, "-c", READ_ONE_TILE, str(path)], capture_output=True, text=True)
            print(f"one level-0 tile claiming {claim} px a side: {done.stdout.strip() or done.stderr[-300:]}")
        slides = Path(folder) / f"claim{args.claims[0]}"
        run = Path(folder) / "run"
        wsi_mil(["tile", str(slides), "--out", str(run), "--patch-size", "256", "--workers", "0", "--quiet"])
        extract = ["extract", str(run), "--encoder", "resnet18", "--weights", "random", "--batch-size", "4"]
        limit = ["--slide-timeout", f"{args.limit:g}"]
        for label, extra in (("no limit", []), (" ".join(limit), limit)):
            argv = [*extract, "--workers", "0", "--quiet", "--overwrite", "--set", "extract.freeze=eager", *extra]
            wall, cpu = _timed(lambda argv=argv: wsi_mil(argv))
            with (run / "manifest.csv").open(newline="") as handle:
                row = next(r for r in csv.DictReader(handle) if r["stage"] == "extract")
            print(
                f"extract, claim {args.claims[0]}, {label}: {wall:.2f} s wall, {cpu:.2f} s cpu, "
                f"status {row['status']}, slide seconds {row['seconds']}"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
