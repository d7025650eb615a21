"""Which epoch's weights a fold keeps: the model-selection rule.

A validation carve-out of a small cohort is too small to choose an epoch: 16-18 bags
give a loss curve so noisy that early stopping picked epoch 1-3 (a near-untrained
model) in a third of the folds of a 90-bag benchmark. So:

- ``fixed``: no carve-out (its slides train too); train ``epochs`` epochs and keep the last;
- ``early_stopping``: train on the rest, track the validation loss (or AUC) smoothed over
  ``smooth_epochs`` epochs, never stop before ``min_epochs``, stop after ``patience``
  epochs without improvement, keep the best smoothed epoch's weights;
- ``auto`` (default): early stopping when the carve-out holds at least ``min_val_bags``
  bags and :data:`MIN_VAL_PER_CLASS` of each class, else fixed.

Each fold records the rule it applied and why (``selection`` in its metrics.json).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

#: Bags of each class a validation carve-out needs before ``auto`` trusts it for early stopping.
MIN_VAL_PER_CLASS = 5


@dataclass(frozen=True)
class SelectionPlan:
    rule: str  #: "fixed" or "early_stopping"
    reason: str
    n_val: int  #: validation bags used (0 for fixed: they train)

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.rule, "reason": self.reason, "n_val": self.n_val}


def plan_selection(selection: str, val_labels: Sequence[int], n_classes: int, *, min_val_bags: int) -> SelectionPlan:
    """The rule for one fold, from ``train.selection`` and the fold's validation labels."""
    n_val = len(val_labels)
    counts = Counter(val_labels)
    smallest = min(counts.get(c, 0) for c in range(n_classes))
    if selection == "fixed":
        return SelectionPlan("fixed", "train.selection is fixed", 0)
    if n_val == 0:
        return SelectionPlan("fixed", "no validation slides (val_fraction 0 or a split column without val)", 0)
    if selection == "early_stopping":
        return SelectionPlan("early_stopping", f"train.selection is early_stopping ({n_val} validation bags)", n_val)
    if n_val < min_val_bags or smallest < MIN_VAL_PER_CLASS:
        return SelectionPlan(
            "fixed",
            f"the validation carve-out would hold {n_val} bags (smallest class {smallest}); "
            f"auto needs {min_val_bags} and {MIN_VAL_PER_CLASS} per class, so its bags train and the "
            "last epoch is kept",
            0,
        )
    return SelectionPlan("early_stopping", f"{n_val} validation bags (smallest class {smallest})", n_val)


def smoothed(values: Sequence[float], window: int) -> float:
    """Mean of the last ``window`` values (fewer at the start)."""
    tail = list(values)[-max(1, window) :]
    return sum(tail) / len(tail)
