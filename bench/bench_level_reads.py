"""Whole pyramid levels read through OpenSlide and tile by tile with tifffile
(``wsi_mil.io.tiff_tiles``): CPU ms per level and whether the pixels are the same.

Run from the repository root (one thread, about a minute)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_level_reads.py

Slides: the real slides of ``../shared/data/slides`` (those OpenSlide opens) and the tiling
benchmark's 20k and 40k px slides (``bench/bench_clam_tiling.py``; made on first use).
"openslide" is ``OpenSlide.read_region`` of the whole level from its origin, converted to
RGB as wsi-mil does; "tiles" is the same level decoded by ``wsi_mil.io.tiff_tiles.TiffTiles`` (no tile cache, so
each repeat decodes every tile) where the slide qualifies for direct decoding (else "-"). Medians of 5 after a warm-up, process CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: Levels larger than this are skipped (OpenSlide takes seconds on them).
MAX_PIXELS = 40_000_000


def cpu_ms(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def slides(data: Path) -> list[Path]:
    from bench_clam_tiling import slide_for

    found = sorted(p for p in (data / "slides").glob("*") if p.suffix in (".svs", ".ndpi", ".tiff", ".tif"))
    return [*found, slide_for(20000, 15000), slide_for(40000, 30000)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from wsi_mil.errors import SlideOpenError
    from wsi_mil.io import open_slide
    from wsi_mil.io.tiff_tiles import TiffTiles

    print("| slide | level | size | openslide ms | tiles ms | openslide / tiles | same pixels |")
    print("|---|---:|---|---:|---:|---:|---|")
    for path in slides(args.data):
        try:
            slide = open_slide(path, reader="openslide")
        except SlideOpenError:
            continue
        with slide:
            qualifies = slide._direct_tiles() is not None
            for level, (width, height) in enumerate(slide.level_dimensions):
                if width * height > MAX_PIXELS:
                    continue
                size = (width, height)
                through = cpu_ms(lambda: slide.read_region((0, 0), level, size, as_array=True), args.repeats)  # noqa: B023
                if not qualifies:
                    print(f"| {path.name} | {level} | {width}x{height} | {through:.1f} | - | - | - |")
                    continue
                decoder = TiffTiles.open(slide.path, slide.level_dimensions, slide.background, cache_bytes=0)
                assert decoder is not None
                tiles = cpu_ms(lambda: decoder.read(level, 0, 0, *size), args.repeats)  # noqa: B023
                decoder.close()
                same = np.array_equal(
                    slide.read_region((0, 0), level, size, as_array=True), slide.read_level_region(level, (0, 0), size)
                )
                print(
                    f"| {path.name} | {level} | {width}x{height} | {through:.1f} | {tiles:.1f} | "
                    f"{through / max(tiles, 1e-9):.1f}x | {'yes' if same else 'NO'} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
