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

CLAM runs twice per size: with the script's defaults, and with its contour area filter lowered
(``a_t`` 16 instead of 100, in CLAM's units of 512 x 512 level-0 px): at 20,000 px the default
filter drops the two smaller tissue pieces (about 2-6 mm^2, the size of many biopsies), which
ours keeps, so it patches half the tissue. "Same tissue" is the like-for-like comparison:
both sides cut patches from the same tissue (patch counts within a few percent). At 40k and
80k px the two CLAM runs keep the same pieces.

Each side runs in its own fresh process: imports, one warm-up slide (its CPU is printed as
"first slide"), then ``--repeats`` timed runs of the same slide; CPU seconds are user + system
of the process and its reaped children (CLAM's Pool workers). The headline is the median CPU.
"""

from __future__ import annotations

import argparse
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
#: CLAM's contour area filter: its default, and low enough to keep every tissue piece of the slides.
CLAM_A_T = {"default": 100, "same tissue": 16}


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


def worker_clam(slide: Path, out: Path, repeats: int, a_t: int) -> dict[str, Any]:
    clock = Clock()
    add_clam_to_path()
    from wsi_core.WholeSlideImage import WholeSlideImage  # CLAM's

    imports = clock.lap()
    seg = {"sthresh": 8, "mthresh": 7, "close": 4, "use_otsu": False, "keep_ids": [], "exclude_ids": []}
    filters = {"a_t": a_t, "a_h": 16, "max_n_holes": 8}
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
    parser.add_argument("--a-t", type=int, default=CLAM_A_T["default"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "ours":
        emit(worker_ours(args.slide, args.out, args.repeats))
        return 0
    if args.worker == "clam":
        emit(worker_clam(args.slide, args.out, args.repeats, args.a_t))
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
            sides = [("ours", "ours", sys.executable, [])]
            sides += [(name, "clam", python, ["--a-t", str(a_t)]) for name, a_t in CLAM_A_T.items()]
            for name, worker, interpreter, extra in sides:
                out = Path(tmp) / name.replace(" ", "-")
                out.mkdir()
                common = ["--worker", worker, "--slide", str(slide), "--out", str(out), "--repeats", str(args.repeats)]
                result[name] = run_worker(
                    interpreter, Path(__file__), common + extra, pythonpath=str(ROOT) if worker == "ours" else ""
                )
        summaries = {name: summarize(r) for name, r in result.items()}
        rows.append((size, summaries, result))
        print(f"\n{size} px at 0.5 um/px ({load_note()})")
        for name, summary in summaries.items():
            r = result[name]
            label = "wsi-mil" if name == "ours" else f"CLAM, {name} (a_t {CLAM_A_T[name]})"
            print(
                f"  {label:28s} CPU {summary['cpu_s']:.3f} s, wall {summary['wall_s']:.3f} s (medians of "
                f"{args.repeats}); first slide CPU {r['first']['cpu_s']:.3f} s; imports CPU "
                f"{r['imports']['cpu_s']:.2f} s; {r['patches']} patches"
            )
        for name in CLAM_A_T:
            ratio = summaries[name]["cpu_s"] / max(summaries["ours"]["cpu_s"], 1e-9)
            verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
            print(f"  CLAM ({name}) CPU / ours: {ratio:.2f}x (target >= {TARGET_RATIO:g}x: {verdict})")
    print(
        "\n| slide | wsi-mil CPU s (wall) | CLAM default CPU s (wall) | ratio | CLAM same tissue CPU s (wall) "
        "| ratio | patches wsi-mil / CLAM default / CLAM same tissue |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for size, summaries, result in rows:
        ours = summaries["ours"]
        cells = [f"{ours['cpu_s']:.3f} ({ours['wall_s']:.3f})"]
        for name in CLAM_A_T:
            clam = summaries[name]
            cells += [f"{clam['cpu_s']:.3f} ({clam['wall_s']:.3f})", f"{clam['cpu_s'] / max(ours['cpu_s'], 1e-9):.2f}x"]
        patches = " / ".join(str(result[name]["patches"]) for name in ("ours", *CLAM_A_T))
        print(f"| {size} | {' | '.join(cells)} | {patches} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
