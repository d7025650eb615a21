"""The non-learned stain baseline in evaluate-maps, and the warnings for maps that do not beat it
or are degenerate (a manifold map that is its seeds, a constant map). Real H&E: Kather 2016
lymphocytes (dark, hematoxylin-rich) beside Kather stroma (eosin), shipped in wsi_mil/data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mil.datasets import embedded_data_dir
from wsi_mil.explain.evaluate import evaluate_maps
from wsi_mil.explain.map_checks import manifold_seeds, seed_spread
from wsi_mil.explain.stain_baseline import DARKNESS, HEMATOXYLIN, stain_baseline_scores
from wsi_mil.io.open import open_slide
from wsi_mil.synthetic import write_image_slide

SIDE, PATCH = 1024, 128
#: The lesion: a square of the stroma half (x 640..1024, y 0..512), pale next to the lymphocytes.
LESION = [[640, 0], [1024, 0], [1024, 512], [640, 512], [640, 0]]


def _mosaic(name: str, width: int, height: int) -> np.ndarray:
    tiles = [
        np.asarray(Image.open(f).convert("RGB"))
        for f in sorted((embedded_data_dir() / "kather2016-samples" / name).glob("*.tif"))
    ]
    out = np.empty((height, width, 3), np.uint8)
    for i, y in enumerate(range(0, height, 150)):
        for j, x in enumerate(range(0, width, 150)):
            tile = tiles[(i + 2 * j) % len(tiles)]
            out[y : y + 150, x : x + 150] = tile[: height - y, : width - x]
    return out


@pytest.fixture(scope="module")
def lympho_stroma_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024 px slide at 0.5 um/px: Kather lymphocytes left of x = 512, stroma right of it."""
    image = np.concatenate([_mosaic("04_LYMPHO", SIDE // 2, SIDE), _mosaic("02_STROMA", SIDE // 2, SIDE)], axis=1)
    return write_image_slide(tmp_path_factory.mktemp("stain") / "lympho-stroma.svs", image, mpp=0.5)


def _grid() -> np.ndarray:
    return np.array([(x, y) for y in range(0, SIDE, PATCH) for x in range(0, SIDE, PATCH)], np.int64)


def test_stain_baseline_scores_rank_lymphocytes_above_stroma(lympho_stroma_slide: Path) -> None:
    coords = _grid()
    with open_slide(lympho_stroma_slide) as slide:
        maps = stain_baseline_scores(slide, coords, PATCH)
    assert set(maps) == {HEMATOXYLIN, DARKNESS} and all(len(v) == len(coords) for v in maps.values())
    lympho = coords[:, 0] < SIDE // 2
    assert maps[HEMATOXYLIN][lympho].min() > maps[HEMATOXYLIN][~lympho].max()
    assert maps[DARKNESS][lympho].mean() > maps[DARKNESS][~lympho].mean() + 0.2
    assert np.all((maps[DARKNESS] >= 0) & (maps[DARKNESS] <= 1))


def test_manifold_spread_counts_patches_beyond_the_seeds() -> None:
    attention = np.arange(100, dtype=float)
    seeds = manifold_seeds(attention)
    assert seeds.sum() == 5 and seeds[-5:].all()
    assert seed_spread(seeds, seeds) == 0.0  # the map is its seeds
    spread = np.where(attention >= 80, 1.0, 0.0)
    assert seed_spread(spread, seeds) == pytest.approx(15 / 5)


def _write_run(tmp_path: Path, slide: Path, coords: np.ndarray, maps: dict[str, np.ndarray]) -> Path:
    from wsi_mil.store.scores import write_scores

    masks = tmp_path / "masks"
    masks.mkdir()
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [LESION]}, "properties": {}}
    (masks / "pos.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    (masks / "neg.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    geometry = {"patch_size_level0": PATCH, "level_dim": [SIDE, SIDE], "slide_path": str(slide), "slide_mpp": 0.5}
    for slide_id in ("pos", "neg"):
        write_scores(
            tmp_path / "run" / "scores" / "abmil" / f"{slide_id}.h5",
            coords,
            maps,
            attrs={
                "classes": ["normal", "tumor"],
                "probs": [0.5, 0.5],
                "pred": 1,
                "model": "abmil",
                "slide_id": slide_id,
            },
            coords_attrs={**geometry, "slide_id": slide_id},
        )
    return masks


def test_evaluate_maps_scores_the_stain_baseline_and_warns(
    tmp_path: Path, lympho_stroma_slide: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The baseline rows are scored like any map; a learned map below them, a manifold map that is its
    seeds and a constant map are each named in explanations.md and the log; a good map is not."""
    coords = _grid()
    lesion = (coords[:, 0] >= 640) & (coords[:, 1] < 512)
    rng = np.random.default_rng(0)
    good = lesion + rng.normal(0, 0.1, len(coords))
    maps = {
        "attention_raw": good,
        "attention": good,
        "attention_pct": good,
        "manifold": manifold_seeds(good),
        "relevance": np.ones(len(coords)),
        "instance_logits": np.stack([lesion * 1.0, lesion * -1.0], 1),
    }
    masks = _write_run(tmp_path, lympho_stroma_slide, coords, maps)
    with caplog.at_level(logging.WARNING, logger="wsi_mil.explain.evaluate"):
        summary, out, _ = evaluate_maps(tmp_path / "run", masks=masks, faithfulness=False)
    by_map = {row["map"]: row for row in summary}
    assert {"stain_hematoxylin", "stain_darkness", "manifold_seeds"} <= set(by_map)
    assert by_map["stain_hematoxylin"]["positive_slides"] == 1 and by_map["stain_hematoxylin"]["slides"] == 2
    assert by_map["stain_hematoxylin"]["auc"] < 0.4  # the lesion is pale stroma: stain points elsewhere
    assert by_map["attention_raw"]["auc"] > 0.99
    text = (out / "explanations.md").read_text()
    warnings = text.split("## Warnings")[1].split("## Localization")[0]
    assert "logit_tumor: patch ROC-AUC 0.000 does not beat the stain baseline" in warnings  # the anti-map
    assert "manifold: little more than its seeds on 2 of 2 slides" in warnings
    assert "manifold: patch ROC-AUC" in warnings and "for its seeds alone" in warnings
    assert "relevance: constant on 2 of 2 slides" in warnings
    assert "attention_raw" not in warnings
    assert "| stain_hematoxylin | 1/2 |" in text
    assert "does not beat the stain baseline" in caplog.text and "little more than its seeds" in caplog.text
    summary, out, _ = evaluate_maps(tmp_path / "run", masks=masks, faithfulness=False, baseline=False)
    assert not {"stain_hematoxylin", "manifold_seeds"} & {row["map"] for row in summary}
