"""Cross-validation splits: stratified k-fold grouped by patient, or the labels CSV's ``split`` column.

``splits.csv`` has one row per slide: ``slide_id, patient_id, label, test_fold`` and one
column ``fold_<k>`` per fold holding ``train``, ``val`` or ``test``. ``test_fold`` is the
fold whose model never saw the slide (-1 when the CSV's own split was used and the slide
is not a test slide); ``predict`` uses it to score CV slides out of fold.
"""

from __future__ import annotations

import contextlib
import csv
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_mil.errors import LabelError
from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)

ROLES = ("train", "val", "test")

#: How the command being run sets the fold count, for advice in errors (`wsi-mil train`: --folds).
_FOLD_OPTION: ContextVar[str] = ContextVar("fold_option", default="--folds N")


@contextlib.contextmanager
def fold_option(option: str) -> Iterator[None]:
    """Name ``option`` (e.g. ``--set train.folds=N`` for ``wsi-mil run``) in fold-count advice within the block."""
    token = _FOLD_OPTION.set(option)
    try:
        yield
    finally:
        _FOLD_OPTION.reset(token)


@dataclass
class Splits:
    slide_ids: list[str]
    labels: list[str]  #: class names
    patients: list[str]
    roles: list[dict[str, str]]  #: per fold: slide_id -> train / val / test
    source: str  #: "kfold" or "csv"

    @property
    def n_folds(self) -> int:
        return len(self.roles)

    def members(self, fold: int, role: str) -> list[str]:
        return [s for s in self.slide_ids if self.roles[fold][s] == role]

    def test_fold(self, slide_id: str) -> int:
        for fold, roles in enumerate(self.roles):
            if roles.get(slide_id) == "test" and self.source == "kfold":
                return fold
        return -1


def _carve_validation(
    train: list[str], labels: dict[str, str], patients: dict[str, str], fraction: float, rng: np.random.Generator
) -> set[str]:
    """About ``fraction`` of each class's patients (at least one when a class has two or more)."""
    if fraction <= 0:
        return set()
    by_class: dict[str, list[str]] = defaultdict(list)
    patient_label: dict[str, str] = {}
    for slide in train:
        patient_label.setdefault(patients[slide], labels[slide])
    for patient, label in sorted(patient_label.items()):
        by_class[label].append(patient)
    chosen: set[str] = set()
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        count = min(len(group) - 1, max(1, round(fraction * len(group)))) if len(group) >= 2 else 0
        chosen.update(group[:count])
    return {s for s in train if patients[s] in chosen}


def _check_folds(labels: dict[str, str], patients: dict[str, str], folds: int, where: str) -> None:
    if folds < 2:
        raise LabelError(
            f"{where}: folds must be at least 2 (got {folds}); use a split column for one train/test split"
        )
    per_class = Counter(label for _, label in {(patients[s], labels[s]) for s in labels})
    small = {c: n for c, n in per_class.items() if n < folds}
    if small:
        unit = "patient(s)" if any(patients[s] != s for s in patients) else "slide(s)"
        detail = ", ".join(f"{c!r}: {n}" for c, n in sorted(small.items()))
        raise LabelError(
            f"{where}: {folds}-fold stratified CV needs at least {folds} {unit} per class, but {detail}. "
            f"Lower the fold count ({_FOLD_OPTION.get()}, N at most {min(per_class.values())}), or label more slides"
        )


def make_splits(
    labels: dict[str, str],
    patients: dict[str, str],
    *,
    folds: int = 5,
    seed: int = 0,
    val_fraction: float = 0.2,
    csv_splits: dict[str, str] | None = None,
    where: str = "labels",
) -> Splits:
    """Splits for the slides in ``labels`` (slide_id -> class name); see the module docstring."""
    slide_ids = sorted(labels)
    if len(set(labels.values())) < 2:
        raise LabelError(
            f"{where}: every slide has the label {next(iter(labels.values()))!r}; training needs two or more classes"
        )
    rng = np.random.default_rng(seed)
    if csv_splits:
        roles = {s: csv_splits[s] for s in slide_ids}
        if "test" not in roles.values():
            raise LabelError(f"{where}: the split column has no 'test' rows; mark held-out slides as test")
        if "val" not in roles.values():
            train = [s for s in slide_ids if roles[s] == "train"]
            roles.update(dict.fromkeys(_carve_validation(train, labels, patients, val_fraction, rng), "val"))
        return Splits(slide_ids, [labels[s] for s in slide_ids], [patients[s] for s in slide_ids], [roles], "csv")
    _check_folds(labels, patients, folds, where)
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.array([labels[s] for s in slide_ids])
    groups = np.array([patients[s] for s in slide_ids])
    if len(set(groups)) == len(groups):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(y, y)
    else:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(y, y, groups)
    all_roles = []
    for fold, (train_index, test_index) in enumerate(splitter):
        train = [slide_ids[i] for i in train_index]
        val = _carve_validation(train, labels, patients, val_fraction, np.random.default_rng(seed + 1000 + fold))
        roles = {slide_ids[i]: "test" for i in test_index}
        roles.update({s: "val" if s in val else "train" for s in train})
        all_roles.append(roles)
        missing = set(y) - {labels[s] for s in roles if roles[s] == "test"}
        if missing:
            logger.warning(
                "fold %d: no test slide of class(es) %s (patient grouping); its ROC-AUC is undefined",
                fold,
                sorted(missing),
            )
    return Splits(slide_ids, [labels[s] for s in slide_ids], [patients[s] for s in slide_ids], all_roles, "kfold")


def check_fold_plan(
    labels: dict[str, str],
    patients: dict[str, str],
    *,
    folds: int,
    seed: int = 0,
    val_fraction: float = 0.2,
    csv_splits: dict[str, str] | None = None,
    where: str = "labels",
) -> Splits:
    """The splits :func:`make_splits` would make, refused (:class:`LabelError`) where a fold could not be
    trained or scored: too few patients per class for the fold count, or patient grouping that leaves
    a fold with no training or no test slide of a class, or with more than half the slides as its
    test set (and over twice its share). Cheap; run it before any tiling."""
    splits = make_splits(
        labels, patients, folds=folds, seed=seed, val_fraction=val_fraction, csv_splits=csv_splits, where=where
    )
    classes = set(labels.values())
    bad = []
    for fold, roles in enumerate(splits.roles):
        for role in ("train", "test"):
            lacking = classes - {labels[s] for s, r in roles.items() if r == role}
            if lacking and not (role == "test" and splits.source == "csv"):
                bad.append(f"fold {fold} would have no {role} slide of class(es) {sorted(lacking)}")
        tested = sum(r == "test" for r in roles.values())
        if splits.source == "kfold" and tested > 2 * len(labels) / splits.n_folds and tested > len(labels) / 2:
            bad.append(f"fold {fold} would test on {tested} of {len(labels)} slides (and train on the rest)")
    if bad:
        sizes = Counter(patients[s] for s in labels)
        largest = ", ".join(f"{p!r} ({n} slides)" for p, n in sizes.most_common(3) if n > 1)
        grouping = f" Patients with several slides stay in one fold: {largest}." if largest else ""
        raise LabelError(
            f"{where}: the {splits.n_folds}-fold plan is unbalanced: {'; '.join(bad)}.{grouping} "
            f"Lower the fold count ({_FOLD_OPTION.get()}) or label more patients of those classes"
        )
    return splits


def write_splits(splits: Splits, path: str | Path) -> Path:
    path = Path(path)
    columns = ["slide_id", "patient_id", "label", "test_fold", *(f"fold_{k}" for k in range(splits.n_folds))]
    with atomic_output(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for slide, patient, label in zip(splits.slide_ids, splits.patients, splits.labels, strict=True):
            roles = [splits.roles[k][slide] for k in range(splits.n_folds)]
            writer.writerow([slide, patient, label, splits.test_fold(slide), *roles])
    return path


def read_splits(path: str | Path) -> Splits:
    path = Path(path)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    n_folds = sum(1 for c in (rows[0] if rows else {}) if c.startswith("fold_"))
    ids = [r["slide_id"] for r in rows]
    roles = [{r["slide_id"]: r[f"fold_{k}"] for r in rows} for k in range(n_folds)]
    source = "kfold" if any(int(r["test_fold"]) >= 0 for r in rows) else "csv"
    return Splits(ids, [r["label"] for r in rows], [r["patient_id"] for r in rows], roles, source)


def fold_count_text(splits: Splits, fold: int) -> str:
    counts = {role: len(splits.members(fold, role)) for role in ROLES}
    return ", ".join(f"{n} {role}" for role, n in counts.items())
