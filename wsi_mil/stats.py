"""The two statistics every table reports, defined once.

- :func:`roc_auc`: scikit-learn's ROC-AUC (tied scores count half), NaN when the truth
  lacks one of the two kinds, never a silent 0.5.
- :func:`mean_std` and :func:`format_mean_std`: "mean ± std" with the **sample** standard
  deviation (``ddof=1``, :data:`STD_DDOF`): folds, repeats and slides are samples of what
  the method would do on other data. One value has no std (NaN, printed as the mean alone).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

#: Delta degrees of freedom of every reported std: 1, the sample standard deviation.
STD_DDOF = 1


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of ``scores`` (N,) against the boolean truth ``positive`` (N,).

    NaN when ``positive`` lacks one of the two kinds or a score is not finite.
    """
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any() or not np.isfinite(scores).all():
        return math.nan
    return float(roc_auc_score(positive, scores))


class MeanStd(NamedTuple):
    """Mean and sample std of the finite values, and how many there were."""

    mean: float  #: NaN without values
    std: float  #: sample std (ddof=1); NaN for fewer than two values
    n: int  #: how many finite values

    def __str__(self) -> str:
        return format_mean_std(self.mean, self.std)


def mean_std(values: Iterable[float]) -> MeanStd:
    """Mean ± sample std of the finite ``values`` (NaN and inf are left out and not counted)."""
    array = np.asarray(list(values), dtype=np.float64)
    array = array[np.isfinite(array)]
    mean = float(array.mean()) if len(array) else math.nan
    std = float(array.std(ddof=STD_DDOF)) if len(array) > STD_DDOF else math.nan
    return MeanStd(mean, std, len(array))


def format_mean_std(mean: float, std: float, *, digits: int = 3) -> str:
    """``0.812 ± 0.034``; the mean alone when std is NaN; ``n/a`` when the mean is NaN."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"
