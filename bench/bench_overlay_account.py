"""Where the blended level-0 overlay's CPU goes: bench_clam_overlay's write of ours, part by part.

Run from the repository root (no CLAM needed)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/bench_overlay_account.py [--size 20000x15000]

The same slide, scores and call as ``bench_clam_overlay.py`` (one thread). The functions
that do the work are wrapped with a CPU clock (``time.process_time``; a part's time
excludes the wrapped parts it calls): the JPEG decode of the slide's stored tiles under
scores, the blend, the JPEG encode, the stored tiles' bytes (``pread``), slide reads
through OpenSlide, the TIFF writes, the per-level set-up (score index, stored-tile
lookup). What is left is the tile loop, tifffile's bookkeeping and the spooled copy of
the reduced levels. Prints one table per call (first and second call in this process,
the libraries imported before, as in the side-by-side benchmark).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_clam_overlay import SLIDES, ours_writer, prepare
from clam_common import load_note


class Account:
    """Exclusive CPU seconds and calls per part, from wrapped functions."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._inner = [0.0]

    def wrap(self, owner: Any, name: str, part: str) -> None:
        function: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.process_time() - start
                self.seconds[part] += spent - self._inner.pop()
                self.calls[part] += 1
                self._inner[-1] += spent

        setattr(owner, name, timed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SLIDES), default="20000x15000")
    args = parser.parse_args(argv)

    import imagecodecs
    import tifffile

    from wsi_mil.explain import blend, blend_patches, stitch

    account = Account()
    account.wrap(imagecodecs, "jpeg8_decode", "JPEG decode of stored tiles under scores")
    account.wrap(imagecodecs, "jpeg_encode", "JPEG encode of blended tiles")
    account.wrap(blend_patches.PatchBlender, "__call__", "blend (PatchBlender)")
    account.wrap(blend.StoredJpegTiles, "tile", "stored tile bytes (pread)")
    account.wrap(blend, "read_slide_block", "slide reads through OpenSlide")
    account.wrap(tifffile.FileHandle, "write", "TIFF writes")
    for owner, name in [
        (blend_patches.PatchBlender, "__init__"),
        (stitch.ScorePainter, "__init__"),
        (blend.StoredJpegTiles, "find"),
    ]:
        account.wrap(owner, name, "level set-up (score index, stored-tile lookup)")

    scores_path, bag_path, patches = prepare(args.size)
    print(f"blended overlay of {args.size}, {patches} patches, one thread; {load_note()}")
    with tempfile.TemporaryDirectory(prefix="overlay-account-") as tmp:
        write, _ = ours_writer(scores_path, bag_path, Path(tmp))
        import cv2  # noqa: F401  # imported first, as in bench_clam_overlay
        import matplotlib  # noqa: F401

        for call in ("first", "second"):
            account.seconds.clear()
            account.calls.clear()
            start, wall = time.process_time(), time.perf_counter()
            write()
            total, wall = time.process_time() - start, time.perf_counter() - wall
            print(f"\n{call} call: CPU {total:.3f} s, wall {wall:.3f} s")
            for part, seconds in account.seconds.most_common():
                print(f"  {part:48s} {seconds:6.3f} s  {100 * seconds / total:5.1f}%  ({account.calls[part]} calls)")
            rest = total - sum(account.seconds.values())
            print(
                f"  {'rest (tile loop, tifffile, reduced-level spool)':48s} {rest:6.3f} s  {100 * rest / total:5.1f}%"
            )
    print(f"\n{load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
