"""Tiling CPU per slide, side by side with CLAM's own segmentation + patching.

Run from the repository root (nice, one thread; see bench/clam_common.py for the CLAM venv)::

    nice -n 5 .venv/bin/python bench/bench_clam_tiling.py --clam-python /tmp/clam-venv/bin/python

Slides: the tiling benchmark's generator and tissue layout (bench_tiling.big_slide_spec, about
26% tissue, Aperio-style JPEG pyramid 1/4/16/64), at 0.5 um/px so that both sides cut the same
256-px level-0 patches, at 20000x15000, 40000x30000 and 80000x60000 px (cached in bench/.cache).

- ours: ``wsi_mil.tiling.tile_slide`` with the default config and QC images off: open, tissue
  detection coarse to fine (the 32 um/px level whole, the 8 um/px level only around the coarse
  mask's edges, holes and faint colour: ``wsi_mil.tiling.refine``), grid, HDF5 bag write
  (coords, tissue fractions, the 8 um/px tissue mask).
- CLAM: what ``create_patches_fp.py --seg --patch`` times per slide: ``WholeSlideImage(path)``,
  ``segmentTissue`` at the level nearest downsample 64 with the script's defaults (sthresh 8,
  mthresh 7, close 4, a_t 100, a_h 16, max_n_holes 8), ``process_contours`` (256 px, step 256,
  level 0, four_pt, padding) writing its coords h5.

Each side runs in its own fresh process: imports, one warm-up slide (its CPU is printed as
"first slide"), then ``--repeats`` timed runs of the same slide; CPU seconds are user + system
of the process and its reaped children (CLAM's Pool workers). The headline is the median CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clam_common import (
    ONE_THREAD,
    ROOT,
    Clock,
    add_clam_to_path,
    bench_parser,
    emit,
    load_note,
    median,
    require_clam,
    run_worker,
)

SIZES = ((20000, 15000), (40000, 30000), (80000, 60000))
TARGET_RATIO = 3.0


def slide_for(width: int, height: int) -> Path:
    from bench_tiling import DEFAULT_CACHE, big_slide_spec, ensure_slide

    spec = dataclasses.replace(big_slide_spec(width, height), name=f"clam{width // 1000}k", mpp=0.5)
    return ensure_slide(spec, DEFAULT_CACHE)


# --------------------------------------------------------------------------- workers


def worker_ours(slide: Path, out: Path, repeats: int) -> dict[str, Any]:
    clock = Clock()
    from wsi_mil.config import Config
    from wsi_mil.io.discover import SlideSource
    from wsi_mil.tiling.tile import tile_slide

    imports = clock.lap()
    config = Config()
    config = dataclasses.replace(config, tiling=dataclasses.replace(config.tiling, qc=False))
    source = SlideSource(slide, slide.stem)
    runs, records = [], []
    for _ in range(1 + repeats):
        records = tile_slide(source, out, config=config, overwrite=True)
        runs.append(clock.lap())
    assert records[0]["status"] == "done", records
    return {"imports": imports, "first": runs[0], "runs": runs[1:], "patches": int(records[0]["n_patches"])}


def worker_clam(slide: Path, out: Path, repeats: int) -> dict[str, Any]:
    clock = Clock()
    add_clam_to_path()
    from wsi_core.WholeSlideImage import WholeSlideImage  # CLAM's

    imports = clock.lap()
    seg = {"sthresh": 8, "mthresh": 7, "close": 4, "use_otsu": False, "keep_ids": [], "exclude_ids": []}
    filters = {"a_t": 100, "a_h": 16, "max_n_holes": 8}
    patch = {"patch_level": 0, "patch_size": 256, "step_size": 256, "use_padding": True, "contour_fn": "four_pt"}
    runs = []
    for _ in range(1 + repeats):
        with contextlib.redirect_stdout(io.StringIO()):  # CLAM prints per contour
            wsi = WholeSlideImage(str(slide))
            level = 0 if len(wsi.level_dim) == 1 else wsi.getOpenSlide().get_best_level_for_downsample(64)
            wsi.segmentTissue(seg_level=level, **seg, filter_params=filters)
            wsi.process_contours(save_path=str(out), **patch)
        runs.append(clock.lap())
    import h5py

    with h5py.File(out / f"{slide.stem}.h5", "r") as handle:
        patches = len(handle["coords"])
    return {"imports": imports, "first": runs[0], "runs": runs[1:], "patches": patches}


# --------------------------------------------------------------------------- driver


def summarize(result: dict[str, Any]) -> dict[str, float]:
    return {key: median([run[key] for run in result["runs"]]) for key in ("cpu_s", "wall_s")}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "--slide")
    parser.add_argument("--sizes", nargs="+", default=[f"{w}x{h}" for w, h in SIZES], help="WIDTHxHEIGHT ...")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side and size, after 1 warm-up")
    args = parser.parse_args(argv)
    if args.worker:
        work = {"ours": worker_ours, "clam": worker_clam}[args.worker]
        emit(work(args.slide, args.out, args.repeats))
        return 0

    python = require_clam(args.clam_python, ["wsi_core/WholeSlideImage.py", "create_patches_fp.py"])
    print(
        f"tiling CPU per slide, wsi-mil vs CLAM (segmentTissue + process_contours); {load_note()}; "
        f"worker env {ONE_THREAD}"
    )
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        slide = slide_for(width, height)
        result = {}
        with tempfile.TemporaryDirectory(prefix="clam-tiling-") as tmp:
            for side, interpreter in (("ours", sys.executable), ("clam", python)):
                out = Path(tmp) / side
                out.mkdir()
                common = ["--worker", side, "--slide", str(slide), "--out", str(out), "--repeats", str(args.repeats)]
                result[side] = run_worker(
                    interpreter, Path(__file__), common, pythonpath=str(ROOT) if side == "ours" else ""
                )
        ours, clam = summarize(result["ours"]), summarize(result["clam"])
        ratio = clam["cpu_s"] / max(ours["cpu_s"], 1e-9)
        rows.append((size, ours, clam, ratio, result))
        print(f"\n{size} px at 0.5 um/px ({load_note()})")
        for side, summary in (("wsi-mil", ours), ("CLAM", clam)):
            r = result["ours" if side == "wsi-mil" else "clam"]
            print(
                f"  {side:8s} CPU {summary['cpu_s']:.3f} s, wall {summary['wall_s']:.3f} s (medians of {args.repeats});"
                f" first slide CPU {r['first']['cpu_s']:.3f} s; imports CPU {r['imports']['cpu_s']:.2f} s;"
                f" {r['patches']} patches"
            )
        verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
        print(f"  CLAM CPU / ours: {ratio:.2f}x (target >= {TARGET_RATIO:g}x: {verdict})")
    print("\n| slide | wsi-mil CPU s (wall) | CLAM CPU s (wall) | CLAM / wsi-mil CPU | patches wsi-mil / CLAM |")
    print("|---|---:|---:|---:|---:|")
    for size, ours, clam, ratio, result in rows:
        print(
            f"| {size} | {ours['cpu_s']:.3f} ({ours['wall_s']:.3f}) | {clam['cpu_s']:.3f} ({clam['wall_s']:.3f}) | "
            f"{ratio:.2f}x | {result['ours']['patches']} / {result['clam']['patches']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
