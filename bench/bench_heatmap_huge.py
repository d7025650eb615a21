"""Heatmap outputs of a 100,000 x 80,000 slide at level 0: seconds and peak RSS per format.

    .venv/bin/python bench/bench_heatmap_huge.py

The goal: a level-0 canvas of this size must be possible on a 24 GB machine. The
scores file describes the slide (``level_dim``, MPP) and a 60,000 x 50,000 px tissue
area of 256-px patches with random scores; no slide file is needed for the score
pyramids (the slide is only read for the PNG thumbnail and the blended overlay, which
bench_heatmap.py measures). Each format runs in a fresh process, so its peak RSS is its
own.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = ("tiff", "rgba_tiff", "zarr")


def write_scores_file(path: Path, width: int, height: int) -> int:
    from wsi_mil.store.scores import write_scores

    xs, ys = np.meshgrid(np.arange(width // 5, width * 4 // 5, 256), np.arange(height // 8, height * 6 // 8, 256))
    coords = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)
    values = np.random.default_rng(0).random(len(coords)).astype(np.float32)
    maps = {
        "attention_raw": values,
        "attention": values / values.sum(),
        "attention_pct": values,
        "instance_logits": np.stack([-values, values], 1),
    }
    write_scores(
        path,
        coords,
        maps,
        attrs={"classes": ["normal", "tumor"], "probs": [0.5, 0.5], "pred": 1, "model": "bench", "slide_id": "huge"},
        coords_attrs={"patch_size_level0": 256, "slide_mpp": 0.25, "level_dim": [width, height], "slide_id": "huge"},
    )
    return len(coords)


def run_one(scores: Path, out: Path, fmt: str) -> None:
    from wsi_mil.config import HeatmapConfig
    from wsi_mil.explain.heatmap_slide import heatmap_slide

    started, cpu = time.perf_counter(), time.process_time()
    heatmap_slide(scores, out_dir=out, options=HeatmapConfig(formats=(fmt,), maps=("attention_pct",)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(
        f"{fmt:10s} {seconds:7.1f} s wall {cpu:7.1f} s CPU   peak RSS {peak:7.0f} MB   on disk {size:6.0f} MB",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(100_000, 80_000), metavar=("W", "H"))
    parser.add_argument("--formats", nargs="+", default=FORMATS, choices=FORMATS)
    parser.add_argument("--one", nargs=3, metavar=("SCORES", "OUT", "FORMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(Path(args.one[0]), Path(args.one[1]), args.one[2])
        return 0
    with tempfile.TemporaryDirectory() as folder:
        scores = Path(folder) / "huge.h5"
        n = write_scores_file(scores, *args.size)
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        print(f"canvas {args.size[0]} x {args.size[1]} at level 0, {n} patches of 256 px, one map\n")
        for fmt in args.formats:
            subprocess.run([sys.executable, __file__, "--one", str(scores), str(Path(folder) / fmt), fmt], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
