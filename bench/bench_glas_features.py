"""GlaS through the real pipeline: ``wsi-mil tile`` + ``wsi-mil extract`` on the 165 images. Prints what it built.

    .venv/bin/python bench/bench_glas_features.py          # needs ../shared/data/glas; about 5-10 CPU minutes
    .venv/bin/python bench/bench_glas_features.py --patch-size 64   # finer grid into glas-64/ (4x the patches)
    .venv/bin/python bench/bench_glas_features.py --encoder uni --checkpoint-path UNI.bin   # into glas-uni/
    .venv/bin/python bench/bench_glas_maps.py --cache glas-uni

Each GlaS image (775 x 522 px, 20x, about 0.62 um/px) is one bag: tiled at its own
resolution (level 0) into 128-px patches (about 79 um) without overlap, every patch kept
whose tissue fraction is at least a quarter (the fields were chosen by a pathologist),
features from the offline ImageNet EfficientNet-Lite0 (the default encoder; ``--encoder`` and
``--checkpoint-path`` for another, e.g. a pathology encoder's weights). Writes, under
bench/.cache/recipe/glas/ (what ``bench_mil_recipe.py --sets glas`` and
``bench_glas_maps.py`` read):

- ``run/`` the wsi-mil run (bags/, features/, manifest.csv);
- ``features`` -> run/features/efficientnet_lite0 (a link) and ``labels.csv``
  (slide_id,label,patient_id: folds are grouped by patient);
- ``gland_fraction.npz``: per slide, each patch's gland fraction from the GlaS mask (the
  localization ground truth in malignant images).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / ".cache" / "recipe" / "glas"
MPP = 0.62
PATCH = 128
ENCODER = "efficientnet_lite0"


def main(argv: list[str] | None = None) -> int:
    from wsi_mil.datasets import shared_data_dir
    from wsi_mil.run_layout import encoder_dir_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=PATCH, help="patch side in image pixels (default 128)")
    parser.add_argument("--encoder", default=ENCODER, help=f"wsi-mil extract --encoder (default {ENCODER})")
    parser.add_argument("--checkpoint-path", default=None, help="wsi-mil extract --checkpoint-path, e.g. UNI's weights")
    parser.add_argument(
        "--out", type=Path, default=None, help="cache folder (default: glas/, glas-<size>/, glas[-<size>]-<encoder>/)"
    )
    args = parser.parse_args(argv)
    suffix = "".join(
        [
            f"-{args.patch_size}" if args.patch_size != PATCH else "",
            f"-{args.encoder}" if args.encoder != ENCODER else "",
        ]
    )
    out = args.out or OUT.with_name(f"glas{suffix}")

    data = shared_data_dir()
    if data is None or not (data / "glas" / "labels.csv").exists():
        print("skipped: ../shared/data/glas not found (research data; it never ships with the repository)")
        return 0
    glas = data / "glas"
    with (glas / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    out.mkdir(parents=True, exist_ok=True)
    slides = out / "slides.csv"
    slides.write_text("path,mpp\n" + "".join(f"{glas / r['image']},{MPP}\n" for r in rows))
    labels = ["slide_id,label,patient_id"] + [f"{Path(r['image']).stem},{r['label']},{r['patient_id']}" for r in rows]
    (out / "labels.csv").write_text("\n".join(labels) + "\n")
    wsi_mil = [sys.executable, "-m", "wsi_mil"]
    run = out / "run"
    started = time.perf_counter()
    subprocess.run(
        [
            *wsi_mil,
            "tile",
            str(slides),
            "--out",
            str(run),
            "--level",
            "0",
            "--patch-size",
            str(args.patch_size),
            "--tissue-threshold",
            "0.25",
            "--reader",
            "image",
            "--workers",
            "0",
            "--quiet",
            "--set",
            "tissue.remove_pen=false",
            "--set",
            "tissue.min_object_um2=1000",
            "--set",
            "tissue.max_hole_um2=4000",
        ],
        check=True,
    )
    tiled = time.perf_counter()
    extract = [*wsi_mil, "extract", str(run), "--encoder", args.encoder, "--workers", "0", "--quiet"]
    if args.checkpoint_path:
        extract += ["--checkpoint-path", str(args.checkpoint_path)]
    subprocess.run([*extract, "--set", "extract.threads=1"], check=True)
    extracted = time.perf_counter()
    link = out / "features"
    if not link.exists():
        link.symlink_to(run / "features" / encoder_dir_name(args.encoder))
    fractions = gland_fractions(rows, glas, run, patch=args.patch_size)
    np.savez(out / "gland_fraction.npz", **fractions)
    n = [len(v) for v in fractions.values()]
    print(
        f"glas: {len(n)} bags, {sum(n)} patches ({min(n)}-{max(n)} per image); tile {tiled - started:.0f} s, "
        f"extract {extracted - tiled:.0f} s wall"
    )
    return 0


def gland_fractions(rows: list[dict[str, str]], glas: Path, run: Path, *, patch: int = PATCH) -> dict[str, np.ndarray]:
    """Per slide: the gland fraction of each bag patch (rows in the bag's coords order)."""
    from PIL import Image

    from wsi_mil.store.bags import read_bag

    out = {}
    for row in rows:
        slide_id = Path(row["image"]).stem
        bag_path = run / "bags" / f"{slide_id}.h5"
        if not bag_path.exists():
            continue
        bag = read_bag(bag_path)
        size = int(bag.attrs.get("patch_size_level0") or patch)
        with Image.open(glas / row["mask"]) as image:
            mask = np.asarray(image.convert("L")) > 0
        out[slide_id] = np.array(
            [mask[y : y + size, x : x + size].mean() for x, y in np.asarray(bag.coords)], np.float32
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
