"""Explanation metrics: annotation rasters, patch ground truth, localization scores, the tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mil.errors import WsiMilError
from wsi_mil.explain.annotations import AnnotationError, load_ground_truth, patch_truth
from wsi_mil.explain.evaluate import evaluate_maps
from wsi_mil.explain.localization import localization_metrics, roc_auc

SLIDE = (4096, 2048)  # level-0 width, height
#: A lesion square in level-0 pixels: x 1024..2048, y 512..1536.
LESION = [[1024, 512], [2048, 512], [2048, 1536], [1024, 1536], [1024, 512]]


def _grid(size: int = 256) -> np.ndarray:
    return np.array([(x, y) for y in range(0, SLIDE[1], size) for x in range(0, SLIDE[0], size)], np.int64)


def _geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _polygon(rings: list, **properties) -> dict:
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings}, "properties": properties}


def test_roc_auc_matches_scikit_learn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + labels * 0.4, 1)  # ties on purpose
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert math.isnan(roc_auc(scores, np.zeros(200, bool)))


def test_patch_truth_is_the_exact_area_fraction(tmp_path: Path) -> None:
    truth = load_ground_truth(_geojson(tmp_path / "s.geojson", [_polygon([LESION])]), SLIDE, max_side=1024)
    coords = np.array([[1024, 512], [896, 512], [0, 0], [1920, 1408]])
    fraction, grade = patch_truth(coords, 256, truth)
    np.testing.assert_allclose(fraction, [1.0, 0.5, 0.0, 0.25], atol=0.01)
    assert grade.tolist() == [2, 2, 0, 2] and not truth.graded


def test_png_mask_geojson_and_asap_xml_agree(tmp_path: Path) -> None:
    mask = np.zeros((512, 1024), np.uint8)  # a thumbnail-sized mask: downsample 4
    mask[128:384, 256:512] = 255
    Image.fromarray(mask).save(tmp_path / "a.png")
    _geojson(tmp_path / "b.geojson", [_polygon([LESION])])
    coords = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(LESION[:4]))
    (tmp_path / "c.xml").write_text(
        f'<ASAP_Annotations><Annotations><Annotation Name="t" PartOfGroup="_0">'
        f"<Coordinates>{coords}</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    fractions = [
        patch_truth(_grid(), 256, load_ground_truth(tmp_path / n, SLIDE))[0] for n in ("a.png", "b.geojson", "c.xml")
    ]
    for fraction in fractions:
        assert int((fraction > 0.99).sum()) == 16  # 4 x 4 patches inside the 1024-px square
        np.testing.assert_allclose(fraction, fractions[0], atol=0.02)


def test_holes_exclusions_and_graded_layers(tmp_path: Path) -> None:
    hole = [[1280, 768], [1792, 768], [1792, 1280], [1280, 1280], [1280, 768]]
    core = [[1024, 512], [1280, 512], [1280, 768], [1024, 768], [1024, 512]]
    features = [
        _polygon([LESION, hole]),
        _polygon([core], grade=3),
        _polygon([[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]], classification={"name": "Exclusion"}),
    ]
    truth = load_ground_truth(_geojson(tmp_path / "g.geojson", features), SLIDE)
    fraction, grade = patch_truth(np.array([[1024, 512], [1280, 768], [1536, 512]]), 256, truth)
    assert truth.graded and grade.tolist() == [3, 0, 2]
    np.testing.assert_allclose(fraction, [1.0, 0.0, 1.0], atol=0.01)


def test_a_mask_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "square.png")
    with pytest.raises(AnnotationError, match="square.png.*aspect ratio"):
        load_ground_truth(tmp_path / "square.png", SLIDE)
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(AnnotationError, match="broken.geojson"):
        load_ground_truth(tmp_path / "broken.geojson", SLIDE)


def test_localization_metrics_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.1, 0.0, 0.6])
    fraction = np.array([1.0, 0.6, 0.0, 0.2, 0.0])  # patches 0 and 1 are lesion
    grade = np.array([3, 2, 0, 1, 0])
    m = localization_metrics(scores, fraction, grade, graded=True)
    assert m["hit"] == 1.0 and m["graded"] == 3.0 and m["auc"] == 1.0
    # scaled map: [1, .889, .111, 0, .667]; at 0.5 patches 0, 1, 4 are on: dice = 2*2/(3+2)
    assert m["dice@0.5"] == pytest.approx(0.8) and m["iou@0.5"] == pytest.approx(2 / 3)
    assert m["coverage_in"] == pytest.approx((1 + 8 / 9) / 2)
    assert m["coverage_out"] == pytest.approx((1 / 9 + 0 + 6 / 9) / 3)
    miss = localization_metrics(scores[::-1], fraction, grade, graded=True)
    assert miss["hit"] == 0.0 and miss["graded"] == 0.0 and miss["auc"] < 0.5


def test_evaluate_maps_writes_one_row_per_map(tmp_path: Path) -> None:
    from wsi_mil.store.scores import write_scores

    coords = _grid()
    truth = load_ground_truth(_geojson(tmp_path / "pos.geojson", [_polygon([LESION])]), SLIDE)
    lesion = patch_truth(coords, 256, truth)[0] >= 0.5
    rng = np.random.default_rng(1)
    good = lesion + rng.normal(0, 0.1, len(coords))
    noise = rng.normal(0, 1, len(coords))
    geometry = {"patch_size_level0": 256, "slide_id": "pos", "level_dim": list(SLIDE)}
    for slide_id in ("pos", "neg", "unannotated"):
        maps = {
            "attention_raw": good,
            "attention": good,
            "attention_pct": good,
            "instance_logits": np.stack([-noise, noise], 1),
        }
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
    masks = tmp_path / "masks"
    masks.mkdir()
    (tmp_path / "pos.geojson").rename(masks / "pos.geojson")
    _geojson(masks / "neg.geojson", [])
    summary, out, _ = evaluate_maps(tmp_path / "run", masks=masks, faithfulness=False)
    by_map = {row["map"]: row for row in summary}
    assert set(by_map) == {"attention_raw", "attention", "attention_pct", "logit_tumor"}
    assert by_map["attention_raw"]["positive_slides"] == 1 and by_map["attention_raw"]["slides"] == 2
    assert by_map["attention_raw"]["auc"] > 0.99 and by_map["attention_raw"]["hit"] == 1.0
    assert by_map["logit_tumor"]["auc"] < 0.8
    table = (out / "explanations.md").read_text()
    assert "| attention_raw | 1/2 |" in table
    assert (out / "explanations.csv").read_text().startswith("map,slides,positive_slides,hit")
    with pytest.raises(WsiMilError, match="no such masks folder"):
        evaluate_maps(tmp_path / "run", masks=tmp_path / "nowhere", faithfulness=False)


def test_faithfulness_curves_follow_the_evidence() -> None:
    """A head whose class-1 logit is 5 x feature 0, with uniform attention: removing the 5 patches
    that carry feature 0 (the map's top 25%) takes the evidence away; random removal does not."""
    torch = pytest.importorskip("torch")
    from wsi_mil.explain.faithfulness import RANDOM, faithfulness_curves
    from wsi_mil.mil.registry import create_mil_model

    head = create_mil_model("abmil", in_dim=4, n_classes=2, hidden_dim=4, attention_dim=2, dropout=0.0).eval()
    with torch.no_grad():
        head.projection[0].weight.copy_(torch.eye(4))
        head.projection[0].bias.zero_()
        head.attention.attention_c.weight.zero_()  # every patch gets the same attention
        head.classifier.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [5.0, 0, 0, 0]]))
        head.classifier.bias.zero_()
    features = np.zeros((20, 4), np.float32)
    features[:5, 0] = 1.0
    features[:, 1] = np.linspace(0, 1, 20)
    coords = np.stack([np.arange(20) * 256, np.zeros(20)], 1).astype(np.int64)
    maps = {"evidence": features[:, 0] + 0.01 * features[:, 1], "wrong": -features[:, 0]}
    rows = {
        (r["map"], r["fraction"]): r
        for r in faithfulness_curves([head], features, coords, maps, target=1, fractions=(0.25,))
    }
    full = 1 / (1 + np.exp(-5 * 5 / 20))  # mean logit 1.25
    assert rows[("evidence", 0.25)]["p_full"] == pytest.approx(full, rel=1e-5)
    assert rows[("evidence", 0.25)]["p_removed"] == pytest.approx(0.5, abs=1e-6)  # no evidence left
    assert rows[("evidence", 0.25)]["p_kept"] == pytest.approx(1 / (1 + np.exp(-5)), rel=1e-5)
    assert rows[("wrong", 0.25)]["drop"] < 0  # removing non-evidence raises the probability
    assert rows[("evidence", 0.25)]["drop"] > rows[(RANDOM, 0.25)]["drop"] > rows[("wrong", 0.25)]["drop"]


def test_cam_pixel_localization(tmp_path: Path) -> None:
    from wsi_mil.explain.cam_metrics import cam_localization

    # The patch at (896, 512) is half inside the lesion (its right half, x >= 1024).
    truth = load_ground_truth(_geojson(tmp_path / "s.geojson", [_polygon([LESION])]), SLIDE)
    right = np.zeros((8, 8), np.float32)
    right[:, 4:] = 1.0
    good = cam_localization(np.array([[896, 512]]), right[None], 256, truth)
    assert good["pixel_auc"] == pytest.approx(1.0) and good["hit"] == 1.0
    bad = cam_localization(np.array([[896, 512]]), 1 - right[None], 256, truth)
    assert bad["pixel_auc"] == pytest.approx(0.0) and bad["hit"] == 0.0
