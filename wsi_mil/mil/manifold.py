"""Graph-based manifold ranking of patches (Zhou et al. 2004), the ILAM seed's refinement.

The patches of a slide form a graph: each is joined to its neighbours on the patch grid
(8-connected), weighted by the similarity of their features when given,
w_ij = exp(-||h_i - h_j||^2 / (2 sigma^2)) with sigma the median neighbour distance.
Seeds are the most attended patches (y_i = 1). The ranking f solves
(I - alpha S) f = y with S = D^-1/2 W D^-1/2: relevance spreads from the seeds along
tissue that looks alike, filling lesions that attention marks only in part.
"""

from __future__ import annotations

import numpy as np

ALPHA = 0.99
SEED_FRACTION = 0.05


def grid_neighbours(coords: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, of patches one grid step apart (8-connected). coords: (N, 2)."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    cells = np.rint(coords / step).astype(np.int64)
    lookup = {(int(x), int(y)): i for i, (x, y) in enumerate(cells)}
    pairs = []
    for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1)):
        for i, (x, y) in enumerate(cells.tolist()):
            j = lookup.get((x + dx, y + dy))
            if j is not None and j != i:
                pairs.append((min(i, j), max(i, j)))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    unique = np.unique(np.asarray(pairs, np.int64), axis=0)
    return unique[:, 0], unique[:, 1]


def manifold_ranking(
    coords: np.ndarray,
    seed_scores: np.ndarray,
    *,
    step: float,
    features: np.ndarray | None = None,
    alpha: float = ALPHA,
    seed_fraction: float = SEED_FRACTION,
) -> np.ndarray:
    """(N,) float32 ranking scaled to [0, 1]; seeds are the top ``seed_fraction`` of ``seed_scores``
    (at least one). ``step``: the grid spacing in level-0 pixels (the patch stride)."""
    from scipy.sparse import coo_matrix, diags, identity
    from scipy.sparse.linalg import cg

    scores = np.asarray(seed_scores, dtype=np.float64).reshape(-1)
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.float32)
    y = np.zeros(n)
    y[np.argsort(-scores, kind="stable")[: max(1, round(seed_fraction * n))]] = 1.0
    i, j = grid_neighbours(coords, step)
    if len(i) == 0:
        return y.astype(np.float32)
    weights = np.ones(len(i))
    if features is not None:
        distance = np.sum((np.asarray(features, np.float64)[i] - np.asarray(features, np.float64)[j]) ** 2, axis=1)
        sigma2 = max(float(np.median(distance)), 1e-12)
        weights = np.exp(-distance / (2 * sigma2))
    w = coo_matrix((np.r_[weights, weights], (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
    degree = np.asarray(w.sum(axis=1)).reshape(-1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
    s = diags(inv_sqrt) @ w @ diags(inv_sqrt)
    # I - alpha S is symmetric positive definite for alpha < 1: conjugate gradients converge.
    f, info = cg(identity(n, format="csr") - alpha * s, y, rtol=1e-8, maxiter=10 * n)
    if info != 0:
        raise RuntimeError(f"manifold ranking did not converge (cg info {info})")
    low, high = float(f.min()), float(f.max())
    return ((f - low) / (high - low) if high > low else np.zeros(n)).astype(np.float32)


def grid_step(coords: np.ndarray, fallback: float) -> float:
    """The patch grid's stride in level-0 pixels: the smallest gap between distinct x or y."""
    coords = np.asarray(coords).reshape(-1, 2)
    gaps = [np.diff(np.unique(coords[:, axis])) for axis in (0, 1)]
    positive = np.concatenate([g[g > 0] for g in gaps])
    return float(positive.min()) if len(positive) else float(fallback)
