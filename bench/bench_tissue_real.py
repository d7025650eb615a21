"""Tissue detection on real H&E: per tissue type, the share of tissue kept
and of glass dropped. Prints a table; it is not a test.

Run from the repository root (about a minute)::

    .venv/bin/python bench/bench_tissue_real.py
    .venv/bin/python bench/bench_tissue_real.py --set saturation_range=0.04,0.15 --set min_object_um2=5000

Every real image of ``../shared/data`` becomes a small slide: the image on real glass
(Kather 2016 EMPTY tiles, mirrored into a field half the image's size on each side),
detected the way tiling detects a slide (a box-reduced thumbnail at
``tissue.thumbnail_mpp``, :func:`wsi_mil.tiling.tissue.detect_tissue`), then cut into
the default patch grid (256 px at 0.5 um/px, kept at tissue fraction >= 0.5).

- tissue references (every pixel of the image counts as tissue): GlaS (165 images,
  0.62 um/px, by grade), BreakHis (76, detected with configs/breakhis.yaml's tissue
  section at the 0.5 um/px that tiling assumes without an MPP, by magnification), Kather
  2016 classes (a 6 x 6 quilt of the class's 150-px tiles, 0.495 um/px; ADIPOSE is the
  fat reference), the tissue tiles of ``tiles/`` (read as 2 um/px);
- glass references (every pixel counts as glass): Kather EMPTY quilts and the tiles named
  no-tissue / almost-white (not almost-white-2: it holds pale tissue in a corner). Left
  out: pen tiles (tests/test_tissue*.py), IHC tiles and the 50-px liver crops.

Columns: images; tissue kept = detected share of the image's area (tissue references)
and kept share of the patches that lie inside the image; glass dropped = undetected
share of the glass around it (all rows) and of glass-reference images.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PATCH_UM = 128.0  # 256 px at 0.5 um/px
KATHER_MPP, GLAS_MPP, ASSUMED_MPP, TILE_MPP = 0.495, 0.62, 0.5, 2.0
GLASS_TILES = ("no-tissue", "no-tissue2", "no-tissue-line", "almost-white-1", "almost-white-2", "almost-white-ihc")


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _quilt(files: list[Path], *, grid: int = 6, seed: int = 0) -> np.ndarray:
    """A grid x grid quilt of 150-px tiles (rotated and flipped at random)."""
    tiles = [_rgb(f)[:150, :150] for f in files]
    rng = np.random.default_rng(seed)
    rows = [
        np.concatenate([np.rot90(tiles[rng.integers(len(tiles))], rng.integers(4)) for _ in range(grid)], axis=1)
        for _ in range(grid)
    ]
    return np.concatenate(rows, axis=0)


def _on_glass(image: np.ndarray, glass: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image centred on a mirrored glass field; returns (canvas, (top, left, bottom, right))."""
    height, width = image.shape[:2]
    top, left = height // 2, width // 2
    reps = (2 * height // glass.shape[0] + 2, 2 * width // glass.shape[1] + 2)
    field = np.pad(glass, ((0, glass.shape[0] * reps[0]), (0, glass.shape[1] * reps[1]), (0, 0)), mode="symmetric")
    canvas = np.ascontiguousarray(field[: 2 * height, : 2 * width])
    canvas[top : top + height, left : left + width] = image
    return canvas, (top, left, top + height, left + width)


def measure(image: np.ndarray, mpp: float, glass: np.ndarray, config, *, thumbnail: bool = True) -> dict[str, float]:
    """Detect on the image placed on glass; area shares inside/outside and patch shares inside."""
    from PIL import Image

    from wsi_mil.tiling.grid import tissue_fractions
    from wsi_mil.tiling.refine import refine
    from wsi_mil.tiling.slide_tissue import MAX_RATIO
    from wsi_mil.tiling.tissue import detect_tissue

    canvas, (top, left, bottom, right) = _on_glass(image, glass)
    factor = max(1, int(config.thumbnail_mpp / mpp + 1e-6)) if thumbnail else 1
    small = np.asarray(Image.fromarray(canvas).reduce(factor)) if factor > 1 else canvas
    coarse_factor = min(int(config.coarse_mpp / mpp + 1e-6), int(MAX_RATIO) * factor) if thumbnail else 0
    refined = None
    if coarse_factor >= 2 * factor:  # a pyramid level at coarse_mpp: coarse-to-fine, as tiling detects
        coarse = np.asarray(Image.fromarray(canvas).reduce(coarse_factor))
        refined = refine(
            coarse,
            coarse_mpp=mpp * coarse_factor,
            fine_shape=small.shape[:2],
            fine_mpp=mpp * factor,
            read_fine=lambda x, y, w, h: small[y : y + h, x : x + w],
            config=config,
        )
    mask = refined.mask if refined is not None else detect_tissue(small, mpp=mpp * factor, config=config)
    inside = np.zeros(mask.shape, bool)
    inside[top // factor : bottom // factor, left // factor : right // factor] = True
    patch = int(round(PATCH_UM / mpp))
    xs, ys = np.arange(left, right - patch + 1, patch), np.arange(top, bottom - patch + 1, patch)
    fractions = tissue_fractions(mask, factor, xs, ys, patch)
    return {
        "area_kept": float(mask[inside].mean()),
        "glass_dropped": float(1 - mask[~inside].mean()),
        "patches": fractions.size,
        "patches_kept": float((fractions >= 0.5 - 1e-9).sum()),
        "fine_share": 1.0 if refined is None else refined.fine_share,
    }


def sources(data: Path) -> list[tuple[str, str, np.ndarray, float, bool, str]]:
    """(group, kind 'tissue'|'glass', image, mpp, thumbnail?, config name) of every real image."""
    from PIL import Image

    items = []
    with open(data / "glas" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            items.append(
                (f"GlaS {row['grade']}", "tissue", _rgb(data / "glas" / row["image"]), GLAS_MPP, True, "default")
            )
    with open(data / "breakhis" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            items.append(
                (
                    f"BreakHis {row['magnification']}",
                    "tissue",
                    _rgb(data / "breakhis" / row["image"]),
                    ASSUMED_MPP,
                    True,
                    "breakhis",
                )
            )
    for folder in sorted((data / "kather2016-samples").iterdir()):
        kind = "glass" if "EMPTY" in folder.name else "tissue"
        for seed in range(3):
            items.append(
                (
                    f"Kather {folder.name}",
                    kind,
                    _quilt(sorted(folder.glob("*.tif")), seed=seed),
                    KATHER_MPP,
                    True,
                    "default",
                )
            )
    for path in sorted((data / "tiles").glob("*.png")):
        if "pen" in path.name or ("ihc" in path.name and "almost" not in path.name) or path.stem == "almost-white-2":
            continue  # pen: tests/test_tissue*.py; IHC; almost-white-2 holds pale tissue in a corner
        if min(Image.open(path).size) < 100:
            continue  # 50-px liver crops: smaller than the smallest tissue fragment at 2 um/px
        glass = path.stem in GLASS_TILES
        group = "tiles glass" if glass else f"tiles {path.stem.split('-level')[0].split('-', 1)[0]}"
        items.append((group, "glass" if glass else "tissue", _rgb(path), TILE_MPP, False, "default"))
    return items


def configs(overrides: dict[str, object]) -> dict[str, object]:
    from wsi_mil.config import load_config

    default = load_config(None).tissue
    breakhis = load_config(ROOT / "configs" / "breakhis.yaml").tissue
    return {
        "default": dataclasses.replace(default, **overrides),
        "breakhis": dataclasses.replace(breakhis, **overrides),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="tissue setting for every row, e.g. saturation_range=0.04,0.15",
    )
    args = parser.parse_args(argv)
    from wsi_mil.datasets import shared_data_dir

    data = shared_data_dir()
    if data is None:
        sys.exit("needs ../shared/data (or WSI_MIL_DATA)")
    overrides: dict[str, object] = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = (
            tuple(float(v) for v in value.split(","))
            if "," in value
            else (
                value.lower() == "true"
                if value.lower() in ("true", "false")
                else (int(value) if value.lstrip("-").isdigit() else float(value))
            )
        )
    tissue_configs = configs(overrides)
    glass = _quilt(sorted((data / "kather2016-samples" / "08_EMPTY").glob("*.tif")), grid=4, seed=7)
    cpu, wall = time.process_time(), time.perf_counter()
    rows: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for group, kind, image, mpp, thumbnail, config in sources(data):
        rows[(group, kind)].append(measure(image, mpp, glass, tissue_configs[config], thumbnail=thumbnail))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"tissue settings: defaults{''.join(f', {k}={v}' for k, v in overrides.items())} (BreakHis: configs/breakhis.yaml)"
    )
    print(
        "| group | kind | images | tissue kept (area) | tissue patches kept | glass dropped (around) | glass dropped (image) "
        "| fine level read |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (group, kind), results in sorted(rows.items(), key=lambda r: (r[0][1] != "tissue", r[0][0])):
        around = np.mean([r["glass_dropped"] for r in results])
        area = np.mean([r["area_kept"] for r in results])
        patches = sum(r["patches"] for r in results)
        kept = sum(r["patches_kept"] for r in results) / patches if patches else float("nan")
        share = np.mean([r["fine_share"] for r in results])
        if kind == "tissue":
            print(
                f"| {group} | tissue | {len(results)} | {area:.3f} | {kept:.3f} ({patches}) | {around:.3f} | | {share:.2f} |"
            )
        else:
            print(f"| {group} | glass | {len(results)} | | | {around:.3f} | {1 - area:.3f} | {share:.2f} |")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{sum(len(r) for r in rows.values())} images in {wall:.1f} s wall, {cpu:.1f} s CPU "
        f"(process {usage.ru_utime + usage.ru_stime:.0f} s CPU); machine shared with other work"
    )


if __name__ == "__main__":
    main()
