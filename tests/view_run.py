"""A small run for the viewer's tests: two synthetic slides tiled by the real tiling stage,
scores with a planted lesion written by the real score writer, a label table, a manifest
(with one failed slide) and a GeoJSON annotation of the lesion.

``lesion``: tissue 1536 x 1024 px at (1024, 512) (24 patches of 256 px); the four patches of
its top-left 512 x 512 px are the lesion: instance logit margin +8.8 and high attention,
every other patch -3 and low. ``normal``: the same tissue, all patches -3.1 +- 0.3 (low).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wsi_mil.config import load_config
from wsi_mil.io.discover import find_slides
from wsi_mil.manifest import Manifest
from wsi_mil.store.bags import read_bag
from wsi_mil.store.scores import GEOMETRY_ATTRS, write_scores
from wsi_mil.tiling.tile import tile_slide

MODEL = "abmil"
SECOND = "ilam"  # a second head, with half the values and no manifold map
LESION = (1024, 512, 512, 512)  # x, y, width, height in level-0 px
TISSUE = (1024, 512, 1536, 1024)
CLASSES = ["normal", "tumor"]


def in_lesion(coords: np.ndarray) -> np.ndarray:
    x, y, w, h = LESION
    return (coords[:, 0] >= x) & (coords[:, 0] < x + w) & (coords[:, 1] >= y) & (coords[:, 1] < y + h)


def _maps(coords: np.ndarray, *, lesion: bool, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(coords)
    hot = in_lesion(coords) if lesion else np.zeros(n, bool)
    raw = np.where(hot, 6.0, 0.0) + rng.normal(0, 0.3, n)
    margin = np.where(hot, 8.8, -3.1) + rng.normal(0, 0.3, n)
    logits = np.stack([-margin / 2, margin / 2], axis=1)
    attention = np.exp(raw) / np.exp(raw).sum()
    return {
        "attention_raw": raw,
        "attention": attention,
        "attention_pct": (np.argsort(np.argsort(raw)) + 0.5) / n,
        "instance_logits": logits,
        "contribution": attention[:, None] * logits,
        "manifold": np.where(hot, 0.9, 0.1),
    }


def _write_cams(path: Path, coords: np.ndarray) -> None:
    """CAMs of the two lesion patches first in the scores file: a bright left half, as the CAM stage writes them."""
    from wsi_mil.explain.cams_file import PatchCams, write_cams

    rows = np.flatnonzero(in_lesion(coords))[:2]
    images = np.full((len(rows), 64, 64, 3), 200, dtype=np.uint8)
    cam = np.zeros((len(rows), 64, 64), dtype=np.float32)
    cam[:, :, :32] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cams(path, PatchCams(coords[rows], rows, images, {"gradcam": cam}))


def build_run(run: Path, slides: dict[str, Path], *, masks: Path) -> Path:
    """``slides``: {"lesion": path, "normal": path}, slides whose file stems are those ids."""
    config = load_config()
    manifest = Manifest(run)
    labels = []
    for slide_id, path in slides.items():
        manifest.update(
            tile_slide(find_slides([str(path)], extensions=config.tiling.extensions)[0], run, config=config)
        )
        bag = read_bag(run / "bags" / f"{slide_id}.h5")
        lesion = slide_id == "lesion"
        maps = _maps(bag.coords, lesion=lesion, seed=len(labels))
        geometry = {k: bag.attrs[k] for k in GEOMETRY_ATTRS if k in bag.attrs}
        for head, probs in (
            (MODEL, [0.02, 0.98] if lesion else [0.9, 0.1]),
            (SECOND, [0.1, 0.9] if lesion else [0.7, 0.3]),
        ):
            head_maps = maps if head == MODEL else {k: v * 0.5 for k, v in maps.items() if k != "manifold"}
            write_scores(
                run / "scores" / head / f"{slide_id}.h5",
                bag.coords,
                head_maps,
                coords_attrs=geometry,
                attrs={
                    "probs": probs,
                    "pred": int(np.argmax(probs)),
                    "classes": CLASSES,
                    "model": head,
                    "folds": [len(labels)],
                    "fold_policy": "out_of_fold",
                    "slide_id": slide_id,
                },
            )
        if lesion:
            _write_cams(run / "heatmaps" / MODEL / slide_id / "cams.h5", bag.coords)
        labels.append(f"{slide_id},p{slide_id},{'tumor' if lesion else 'normal'},{len(labels)}")
    manifest.update(
        [
            {
                "stage": "tiling",
                "slide_id": "broken",
                "bag_set": "-",
                "status": "failed",
                "error": "broken.svs: not a readable slide",
            }
        ]
    )
    manifest.save()
    (run / "models" / MODEL).mkdir(parents=True, exist_ok=True)
    (run / "models" / MODEL / "splits.csv").write_text(
        "slide_id,patient_id,label,test_fold\n" + "\n".join(labels) + "\n"
    )
    masks.mkdir(parents=True, exist_ok=True)
    x, y, w, h = LESION
    ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}
    (masks / "lesion.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return run


def viewer_slides(make_slide) -> dict[str, Path]:
    """The two slides of the viewer's run, from tests/conftest.py's ``make_slide``."""
    from wsi_mil.synthetic import Region

    return {name: make_slide(name, regions=(Region(*TISSUE),)) for name in ("lesion", "normal")}
