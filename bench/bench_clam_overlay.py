"""A blended level-0 RGB overlay, side by side with CLAM's own ``WholeSlideImage.visHeatmap``.

Run from the repository root (nice; see bench/clam_common.py for the CLAM venv)::

    nice -n 5 .venv/bin/python bench/bench_clam_overlay.py --clam-python /tmp/clam-venv/bin/python

The slide and scores are the heatmap benchmark's (bench_heatmap.prepare): a 20000x15000
Aperio-style slide at 0.25 um/px, tiled at level 0 into 256-px patches, the first 852 patches
with random scores; the map is ``attention_pct`` (0-1; CLAM gets the same values x 100, as
its ``visHeatmap`` divides by 100).

- ours: the heatmap stage's blended overlay (``explain/blend.write_blend_tiff`` over the
  stage's ``ScorePainter`` levels, tissue mask from the bag, range 0-1): a level-0 RGB image of the slide with the colour-mapped
  scores over tissue, written as a JPEG-compressed pyramidal TIFF (levels 1/4/16/64), with
  CLAM's colour map and alpha (coolwarm, 0.4) and one thread.
- CLAM: ``visHeatmap(scores, coords, vis_level=0, patch_size=(256, 256), alpha=0.4,
  cmap='coolwarm', segment=True, use_holes=True, blur=False)`` after ``segmentTissue`` (untimed,
  its contours are the tissue mask): a level-0 RGB PIL image, 20000x15000, in memory.

Both outputs are RGB images of the slide at level 0 (20000x15000), blended with the colour map
over the scored tissue. They are compared at 1/16 (CLAM's image box-reduced; ours: its
pyramid level at downsample 16): mean absolute difference inside and outside the patches.
Timing: CPU (user + system) and wall seconds of the first call in the worker process, with
each side's libraries imported before the clock (CLAM's module imports cv2, matplotlib and
openslide; ours imports cv2, imagecodecs, matplotlib and tifffile on first use, so the worker
imports them first and reports what that cost). A second call of ours is timed as well.
Peak memory: the process's peak RSS (``ru_maxrss``) for both; for ours also tracemalloc's peak
(numpy's allocations included) in a third run, and the same on a 40000x30000 slide with
5010 patches to show that it does not grow with the slide.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clam_common import (
    ROOT,
    Clock,
    add_clam_to_path,
    bench_parser,
    emit,
    load_note,
    peak_rss_mb,
    require_clam,
    run_worker,
)

TARGET_SPEEDUP, TARGET_MB = 30.0, 1024.0
SLIDES = {"20000x15000": 852, "40000x30000": None}  # patches used (None: all)
CMAP, ALPHA, REDUCE = "coolwarm", 0.4, 16


def prepare(size: str) -> tuple[Path, Path, int]:
    from bench_heatmap import prepare as prepare_scores
    from bench_tiling import DEFAULT_CACHE, big_slide_spec, ensure_slide

    width, height = (int(v) for v in size.split("x"))
    slide = ensure_slide(dataclasses.replace(big_slide_spec(width, height), name=f"heatmap{width}"), DEFAULT_CACHE)
    return prepare_scores(slide, DEFAULT_CACHE / "heatmap" / slide.stem, SLIDES[size])


def worker_ours(scores_path: Path, bag_path: Path, out: Path) -> dict[str, Any]:
    """explain/blend.py's write_blend_tiff over ScorePainter levels, as the heatmap stage calls it."""
    write, slide = ours_writer(scores_path, bag_path, out)
    clock = Clock()
    # The libraries the write imports on first use, imported before the clock as CLAM's worker
    # imports its own (its WholeSlideImage module imports cv2, matplotlib.pyplot, openslide).
    import cv2  # noqa: F401
    import imagecodecs  # noqa: F401
    import matplotlib  # noqa: F401
    import tifffile  # noqa: F401

    imports = clock.lap()
    write()
    timed = clock.lap()
    write()
    second = clock.lap()
    rss = peak_rss_mb()
    tracemalloc.start()
    write()
    traced_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {
        **timed,
        "second_cpu_s": second["cpu_s"],
        "second_wall_s": second["wall_s"],
        "imports_cpu_s": imports["cpu_s"],
        "rss_mb": rss,
        "tracemalloc_mb": traced_mb,
        "output": str(_reduced_ours(out, slide.dimensions)),
    }


def ours_writer(scores_path: Path, bag_path: Path, out: Path) -> tuple[Callable[[], None], Any]:
    """(write, slide): a call that writes our overlay of the benchmark's scores, and the open slide."""
    import h5py

    from wsi_mil.config import HeatmapConfig
    from wsi_mil.explain.blend import write_blend_tiff
    from wsi_mil.explain.stitch import CanvasGeometry, ScorePainter, ScoreRange, TissueMask
    from wsi_mil.io.open import open_slide
    from wsi_mil.store.bags import read_bag

    with h5py.File(scores_path, "r") as handle:
        coords, values = handle["coords"][:], handle[_find_scores(handle)][:].astype(np.float64)
        patch = int(handle["coords"].attrs["patch_size_level0"])
    bag = read_bag(bag_path)
    tissue = TissueMask(bag.tissue_mask, float(bag.mask_attrs["downsample"]))
    slide = open_slide(bag.attrs["slide_path"])
    options = HeatmapConfig(formats=("blend_tiff",), cmap=CMAP, alpha=ALPHA, threads=1)

    def level(downsample: float) -> ScorePainter:
        geometry = CanvasGeometry.for_slide(slide.dimensions, downsample)
        return ScorePainter(
            coords, values, patch_size_level0=patch, tissue=tissue, chunks=(256, 256), geometry=geometry
        )

    def write() -> None:
        write_blend_tiff(
            out / "attention_pct_blend.tiff", slide, level, options=options, score_range=ScoreRange(0.0, 1.0)
        )

    return write, slide


def _reduced_ours(out: Path, dimensions: tuple[int, int]) -> Path:
    """Our overlay's pyramid level at downsample 16, saved as .npy beside it."""
    import tifffile

    path = next(p for p in out.rglob("*.tif*") if p.is_file())
    shape = (dimensions[1] // REDUCE, dimensions[0] // REDUCE)
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        level = next(lv for lv in levels if abs(lv.shape[0] - shape[0]) <= 1 and abs(lv.shape[1] - shape[1]) <= 1)
        np.save(out / "reduced.npy", level.asarray()[..., :3])
    return out / "reduced.npy"


def worker_clam(scores_path: Path, slide_path: Path, out: Path) -> dict[str, Any]:
    import h5py
    from PIL import Image

    add_clam_to_path()
    import contextlib
    import io

    from wsi_core.WholeSlideImage import WholeSlideImage  # CLAM's

    with h5py.File(scores_path, "r") as handle:
        coords = handle["coords"][:]
        values = handle[_find_scores(handle)][:]
    with contextlib.redirect_stdout(io.StringIO()):
        wsi = WholeSlideImage(str(slide_path))
        seg_level = wsi.getOpenSlide().get_best_level_for_downsample(64)
        wsi.segmentTissue(
            seg_level=seg_level,
            sthresh=8,
            mthresh=7,
            close=4,
            use_otsu=False,
            filter_params={"a_t": 100, "a_h": 16, "max_n_holes": 8},
        )
        clock = Clock()
        image = wsi.visHeatmap(
            values.astype(np.float64) * 100,
            coords,
            vis_level=0,
            patch_size=(256, 256),
            alpha=ALPHA,
            cmap=CMAP,
            segment=True,
            use_holes=True,
            blur=False,
        )
        timed = clock.lap()
    rss = peak_rss_mb()
    size = image.size
    small = image.resize((size[0] // REDUCE, size[1] // REDUCE), Image.Resampling.BOX)
    np.save(out / "reduced.npy", np.asarray(small))
    return {**timed, "rss_mb": rss, "size": list(size), "output": str(out / "reduced.npy")}


def _find_scores(handle: Any) -> str:
    """The attention_pct dataset's name in a scores file (wherever the format keeps its maps)."""
    names: list[str] = []
    handle.visit(names.append)
    return next(n for n in names if n.endswith("attention_pct"))


def compare(ours: Path, clam: Path, coords: np.ndarray, patch: int) -> dict[str, float]:
    a, b = np.load(ours).astype(np.int16), np.load(clam).astype(np.int16)
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    diff = np.abs(a[:h, :w] - b[:h, :w]).mean(axis=-1)
    inside = np.zeros((h, w), dtype=bool)
    for x, y in coords // REDUCE:
        inside[y : y + patch // REDUCE, x : x + patch // REDUCE] = True
    return {
        "mean_abs_diff_in_patches": float(diff[inside].mean()),
        "mean_abs_diff_elsewhere": float(diff[~inside].mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, "--scores", "--other")
    parser.add_argument("--skip-flat", action="store_true", help="skip ours on the 40000x30000 slide")
    args = parser.parse_args(argv)
    if args.worker == "ours":
        emit(worker_ours(args.scores, args.other, args.out))
        return 0
    if args.worker == "clam":
        emit(worker_clam(args.scores, args.other, args.out))
        return 0

    python = require_clam(args.clam_python, ["wsi_core/WholeSlideImage.py"])
    import h5py

    print(f"blended level-0 overlay, wsi-mil vs CLAM visHeatmap; {load_note()}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clam-overlay-") as tmp:
        for size in SLIDES if not args.skip_flat else ["20000x15000"]:
            scores_path, bag_path, n = prepare(size)
            out = Path(tmp) / f"ours-{size}"
            out.mkdir()
            ours = run_worker(
                sys.executable,
                Path(__file__),
                ["--worker", "ours", "--scores", str(scores_path), "--other", str(bag_path), "--out", str(out)],
                pythonpath=str(ROOT),
            )
            results[size] = {"patches": n, "ours": ours}
            print(
                f"  {size} ({n} patches) wsi-mil: CPU {ours['cpu_s']:.2f} s, wall {ours['wall_s']:.2f} s (second call: "
                f"CPU {ours['second_cpu_s']:.2f} s, wall {ours['second_wall_s']:.2f} s; its libraries' imports before: "
                f"CPU {ours['imports_cpu_s']:.2f} s), peak RSS {ours['rss_mb']:.0f} MB, tracemalloc peak "
                f"{ours['tracemalloc_mb']:.0f} MB ({load_note()})",
                flush=True,
            )
        scores_path, bag_path, n = prepare("20000x15000")
        with h5py.File(bag_path, "r") as handle:
            slide_path = Path(str(handle["coords"].attrs["slide_path"]))
        with h5py.File(scores_path, "r") as handle:
            coords = handle["coords"][:]
        out = Path(tmp) / "clam"
        out.mkdir()
        clam = run_worker(
            python,
            Path(__file__),
            ["--worker", "clam", "--scores", str(scores_path), "--other", str(slide_path), "--out", str(out)],
        )
        print(
            f"  20000x15000 ({n} patches) CLAM visHeatmap: CPU {clam['cpu_s']:.2f} s, wall {clam['wall_s']:.2f} s, "
            f"peak RSS {clam['rss_mb']:.0f} MB, image {clam['size'][0]}x{clam['size'][1]} ({load_note()})"
        )
        ours = results["20000x15000"]["ours"]
        agreement = compare(Path(ours["output"]), Path(clam["output"]), coords, 256)
    cpu_ratio, wall_ratio = clam["cpu_s"] / ours["cpu_s"], clam["wall_s"] / ours["wall_s"]
    verdict = "MET" if cpu_ratio >= TARGET_SPEEDUP else "NOT MET"
    print(
        f"\n  speed-up at 20000x15000: CPU {cpu_ratio:.1f}x, wall {wall_ratio:.1f}x (target >= {TARGET_SPEEDUP:g}x: {verdict}); "
        f"second call CPU {clam['cpu_s'] / ours['second_cpu_s']:.1f}x; first call with our libraries' imports "
        f"counted CPU {clam['cpu_s'] / (ours['cpu_s'] + ours['imports_cpu_s']):.1f}x"
    )
    peaks = [r["ours"]["rss_mb"] for r in results.values()]
    print(
        f"  wsi-mil peak RSS {' / '.join(f'{p:.0f}' for p in peaks)} MB over {' / '.join(results)} "
        f"(target < {TARGET_MB:.0f} MB and flat: {'MET' if max(peaks) < TARGET_MB else 'NOT MET'})"
    )
    print(
        f"  outputs at 1/{REDUCE}: mean |ours - CLAM| per channel {agreement['mean_abs_diff_in_patches']:.1f} inside "
        f"the scored patches, {agreement['mean_abs_diff_elsewhere']:.1f} elsewhere (0-255)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
