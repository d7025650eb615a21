"""The statistics every table reports: scikit-learn's ROC-AUC and mean ± sample std."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from wsi_mil.stats import STD_DDOF, format_mean_std, mean_std, roc_auc


def test_roc_auc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, 300).astype(float)  # four distinct values: almost every score is tied
    positive = rng.random(300) < scores / 6 + 0.1
    assert roc_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    # all tied: chance; one positive above everything else: 1
    assert roc_auc(np.ones(10), np.arange(10) < 3) == 0.5
    assert roc_auc(np.r_[2.0, np.ones(9)], np.arange(10) < 1) == 1.0


def test_roc_auc_is_nan_when_undefined() -> None:
    assert math.isnan(roc_auc(np.arange(5.0), np.zeros(5, bool)))
    assert math.isnan(roc_auc(np.arange(5.0), np.ones(5, bool)))
    assert math.isnan(roc_auc(np.array([0.1, np.nan, 0.3]), np.array([False, True, True])))


def test_mean_std_is_the_sample_std() -> None:
    values = [0.6, 0.7, 0.9, 1.0]
    summary = mean_std(values)
    assert STD_DDOF == 1
    assert summary.std == pytest.approx(np.std(values, ddof=1)) and summary.std != pytest.approx(np.std(values))
    assert (summary.mean, summary.n) == (pytest.approx(0.8), 4)
    assert str(summary) == f"0.800 ± {np.std(values, ddof=1):.3f}"
    one = mean_std([0.5, math.nan])  # non-finite values are left out
    assert (one.mean, one.n) == (0.5, 1) and math.isnan(one.std) and str(one) == "0.500"
    assert str(mean_std([])) == "n/a" == format_mean_std(math.nan, math.nan)


def test_every_table_uses_it() -> None:
    from wsi_mil.explain.evaluate_tables import summarize as localization_summary
    from wsi_mil.mil.metrics import METRICS, summarize

    folds = [dict.fromkeys(METRICS, v) for v in (0.6, 0.7, 0.9, 1.0)]
    assert summarize(folds)["roc_auc"] == mean_std([0.6, 0.7, 0.9, 1.0])
    rows = [{"map": "attention", "n_lesion_patches": 3, "auc": v} for v in (0.6, 0.7, 0.9, 1.0)]
    (entry,) = localization_summary(rows)
    assert (entry["auc"], entry["auc_std"]) == pytest.approx(tuple(mean_std([0.6, 0.7, 0.9, 1.0])[:2]))
