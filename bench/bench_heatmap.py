"""Heatmap benchmark: prints timings and peak memory, it is not a test.

Run from the repository root::

    .venv/bin/python bench/bench_heatmap.py                  # both slide sizes
    .venv/bin/python bench/bench_heatmap.py --sizes 20000x15000

For each synthetic Aperio-like slide (JPEG pyramid 1/4/16/64 at 0.25 um/px, the tiling
benchmark's tissue layout scaled to the slide; cached under ``bench/.cache/``), the slide
is tiled at level 0 into 256-px patches and given random per-patch scores (on the
20000x15000 slide the first 852 patches, CLAM's reference count). Then three cases,
each in a fresh Python process so that its peak RSS is its own:

- ``tiff``: the level-0 float32 score pyramid as a tiled TIFF (``<map>.tiff``);
- ``zarr``: the level-0 score pyramid as OME-Zarr (``<map>.ome.zarr``);
- ``blend``: the level-0 RGB overlay blended with the slide (JPEG pyramid TIFF), tile
  by tile, copying the slide's stored JPEG tiles where there is no score.

Each case runs the stage's own per-map writer (``heatmap_formats.write_map``) with default
options. Seconds are for the write (scores, bag and slide already opened; imports
excluded): best, median and worst of ``--repeats``; peak RSS is the process's
``ru_maxrss`` (imports included).
Reference (measured on this machine, not by this script): CLAM's
``visHeatmap(vis_level=0)`` on a 20000x15000 slide with 852 patches, 78 s, 5.6 GB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_tiling import DEFAULT_CACHE, big_slide_spec, ensure_slide, machine  # noqa: E402

CLAM = {"seconds": 78.0, "rss_gb": 5.6}
TARGETS = {"pyramid_s": CLAM["seconds"] / 30, "blend_s": CLAM["seconds"] / 10, "rss_gb": 1.0}
CASES = ("tiff", "zarr", "blend")
CLAM_PATCHES = 852


def prepare(slide: Path, work: Path, limit: int | None) -> tuple[Path, Path, int]:
    """Tile the slide at level 0 (256 px) once and write a scores file; returns (scores, bag, n)."""
    import numpy as np

    from wsi_mil.config import load_config
    from wsi_mil.io.discover import find_slides
    from wsi_mil.store.bags import read_bag
    from wsi_mil.store.scores import write_scores
    from wsi_mil.tiling.tile import tile_slide

    bag_path = work / "bags" / f"{slide.stem}.h5"
    scores_path = work / "scores" / "bench" / f"{slide.stem}.h5"
    if not bag_path.exists():
        config = load_config(sets=["tiling.level=0", "tiling.target_mpp=[]", "tiling.qc=false"])
        tile_slide(find_slides([str(slide)], extensions=config.tiling.extensions)[0], work, config=config)
    bag = read_bag(bag_path)
    coords = bag.coords[:limit] if limit else bag.coords
    rng = np.random.default_rng(0)
    raw = rng.normal(size=len(coords))
    maps = {
        "attention_raw": raw,
        "attention": np.exp(raw) / np.exp(raw).sum(),
        "attention_pct": (np.argsort(np.argsort(raw)) + 0.5) / len(raw),
        "instance_logits": rng.normal(size=(len(raw), 2)),
    }
    geometry = {
        k: bag.attrs[k]
        for k in ("patch_size_level0", "patch_size", "patch_level", "slide_mpp", "target_mpp", "slide_path", "slide_id")
    }
    write_scores(
        scores_path,
        coords,
        maps,
        coords_attrs=geometry,
        attrs={"probs": [0.5, 0.5], "pred": 1, "classes": ["a", "b"], "model": "bench"},
    )
    return scores_path, bag_path, len(coords)


def run_case(case: str, scores_path: Path, bag_path: Path, out: Path) -> dict[str, Any]:
    """One case in this process: the write's seconds and this process's peak RSS."""
    from wsi_mil.config import HeatmapConfig
    from wsi_mil.explain.heatmap_formats import SlideGeometry, write_map
    from wsi_mil.explain.heatmap_slide import read_bag_info
    from wsi_mil.explain.maps import read_scores
    from wsi_mil.explain.scaling import slide_ranges
    from wsi_mil.io.open import open_slide

    scores = read_scores(scores_path)
    values = scores.arrays["attention_pct"].astype("float64")
    tissue = read_bag_info(bag_path).tissue
    slide = open_slide(scores.attrs["slide_path"])
    geometry = SlideGeometry(slide.dimensions, slide.mpp, slide.level_downsamples)
    formats = {"tiff": "tiff", "zarr": "zarr", "blend": "blend_tiff"}[case]
    options = HeatmapConfig(formats=(formats,))
    score_range = slide_ranges({"attention_pct": values}, options=options)["attention_pct"]

    started = time.perf_counter()  # the stage's own per-map writer, default options
    write_map(
        "attention_pct",
        values,
        scores,
        geometry,
        slide,
        tissue,
        out,
        options,
        overwrite=True,
        score_range=score_range,
        scores_file=scores_path.name,
    )
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "bytes": size}


def in_subprocess(case: str, scores_path: Path, bag_path: Path, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        subprocess.run(["rm", "-rf", str(old)], check=True)
    command = [
        sys.executable,
        __file__,
        "--case",
        case,
        "--scores",
        str(scores_path),
        "--bag",
        str(bag_path),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"case {case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["20000x15000", "40000x30000"])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--scores", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bag", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.scores, args.bag, args.out)))
        return 0

    print(json.dumps(machine()))
    results: dict[str, Any] = {}
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        spec = dataclasses.replace(big_slide_spec(width, height), name=f"heatmap{width}")  # own cache entry per size
        slide = ensure_slide(spec, args.cache)
        work = args.cache / "heatmap" / slide.stem
        limit = CLAM_PATCHES if (width, height) == (20000, 15000) else None
        scores_path, bag_path, n = prepare(slide, work, limit)
        row: dict[str, Any] = {"patches": n}
        for case in args.cases:
            runs = [in_subprocess(case, scores_path, bag_path, work / "out") for _ in range(args.repeats)]
            seconds = sorted(r["seconds"] for r in runs)
            row[case] = {
                "best_s": seconds[0],
                "median_s": seconds[len(runs) // 2],
                "worst_s": seconds[-1],
                "rss_mb": max(r["rss_mb"] for r in runs),
                "mb_on_disk": runs[-1]["bytes"] / 1e6,
            }
            print(
                f"{size} ({n} patches) {case:6s} best {seconds[0]:6.2f} s  median {row[case]['median_s']:6.2f} s  "
                f"worst {seconds[-1]:6.2f} s  peak RSS {row[case]['rss_mb']:6.0f} MB  on disk {row[case]['mb_on_disk']:7.1f} MB",
                flush=True,
            )
        results[size] = row
    print(
        f"targets: score pyramid < {TARGETS['pyramid_s']:.2f} s, blended overlay < {TARGETS['blend_s']:.2f} s "
        f"(20000x15000), peak RSS < {TARGETS['rss_gb']} GB (40000x30000); CLAM {CLAM['seconds']} s, {CLAM['rss_gb']} GB"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
