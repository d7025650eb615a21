"""Manifold ranking spreads the seeds' relevance over connected, similar tissue."""

from __future__ import annotations

import numpy as np

from wsi_mil.explain.localization import roc_auc
from wsi_mil.mil.manifold import grid_neighbours, manifold_ranking


def _grid(n: int) -> np.ndarray:
    return np.array([(x * 256, y * 256) for y in range(n) for x in range(n)], np.int64)


def test_grid_neighbours_are_8_connected() -> None:
    i, j = grid_neighbours(_grid(3), 256)
    assert len(i) == 20  # 12 edge + 8 diagonal pairs in a 3 x 3 grid
    assert (0, 4) in set(zip(i.tolist(), j.tolist(), strict=True)) and (0, 8) not in set(
        zip(i.tolist(), j.tolist(), strict=True)
    )


def test_ranking_fills_the_lesion_that_attention_marks_in_part() -> None:
    coords = _grid(20)
    lesion = (np.abs(coords[:, 0] / 256 - 6) <= 3) & (np.abs(coords[:, 1] / 256 - 6) <= 3)  # a 7 x 7 block
    rng = np.random.default_rng(0)
    features = rng.normal(0, 0.3, (len(coords), 8)) + lesion[:, None] * 2.0  # lesion patches look alike
    attention = rng.normal(0, 1, len(coords))
    attention[np.flatnonzero(lesion)[:8]] += 10  # attention marks only a corner of the lesion
    ranked = manifold_ranking(coords, attention, step=256, features=features, seed_fraction=0.02)
    assert ranked.shape == (400,) and ranked.min() == 0.0 and ranked.max() == 1.0
    assert roc_auc(ranked, lesion) > 0.99 > roc_auc(attention, lesion)
    plain = manifold_ranking(coords, attention, step=256, seed_fraction=0.02)  # no features: spreads by distance only
    assert roc_auc(ranked, lesion) > roc_auc(plain, lesion)


def test_isolated_patches_keep_their_seed() -> None:
    coords = np.array([[0, 0], [5120, 5120]])
    assert manifold_ranking(coords, np.array([1.0, 0.0]), step=256).tolist() == [1.0, 0.0]
