"""Labels CSVs for MIL: reading and validating them, matching their slides to a feature set.

A labels CSV is ``slide_id,label[,patient_id][,split]`` (UTF-8, Excel's BOM allowed).
Every problem is a :class:`LabelError` naming the file and its lines: a missing column,
a slide labelled twice with different labels, an empty or NaN-like label, labels that
differ only in case or spaces, a split other than train/val/test.
:func:`match_labels` reports which labelled slides have features and which are left out.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

from wsi_mil.errors import LabelError
from wsi_mil.mil.data import SHOW, FeatureSet, first_ids

logger = logging.getLogger(__name__)


@dataclass
class LabelTable:
    """A labels CSV: ``slide_id,label[,patient_id][,split]``."""

    path: Path
    labels: dict[str, str]  #: slide_id -> label as written
    patients: dict[str, str]  #: slide_id -> patient_id (the slide id when the column is absent)
    splits: dict[str, str]  #: slide_id -> train/val/test, when the CSV has a split column
    classes: list[str]  #: class index -> label

    def index(self, slide_id: str) -> int:
        return self.classes.index(self.labels[slide_id])


def _class_order(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=lambda v: float(v))
    except ValueError:
        return sorted(values)


#: Labels that mean "no label" in spreadsheets and pandas exports; as a class they would be silent noise.
MISSING_LABELS = frozenset({"nan", "na", "n/a", "none", "null", "#n/a"})


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's BOM is not part of a name
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [
                {(k or "").strip(): (v or "").strip() for k, v in row.items() if isinstance(v, str) or v is None}
                for row in reader
            ]
    except UnicodeDecodeError as error:
        raise LabelError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save the labels CSV "
            "as UTF-8 (in Excel: CSV UTF-8) and run again"
        ) from error
    except csv.Error as error:
        raise LabelError(f"{path}: not a readable CSV ({error})") from error
    return columns, rows


def _check_label_values(path: Path, lines: dict[str, list[int]]) -> None:
    """Empty and NaN-like labels, and labels that differ only in case or spaces, are errors naming their lines."""
    problems = []
    missing = {label: numbers for label, numbers in lines.items() if not label or label.lower() in MISSING_LABELS}
    for label, numbers in missing.items():
        problems.append(
            f"{len(numbers)} row(s) with {'an empty label' if not label else f'the label {label!r}'} "
            f"(line(s) {_lines(numbers)})"
        )
    variants: dict[str, list[str]] = {}
    for label in lines:
        if label not in missing:
            variants.setdefault(" ".join(label.lower().split()), []).append(label)
    for group in variants.values():
        if len(group) > 1:
            counts = ", ".join(f"{v!r} ({len(lines[v])} rows, first line {lines[v][0]})" for v in sorted(group))
            problems.append(f"labels that differ only in case or spaces would become separate classes: {counts}")
    if problems:
        raise LabelError(
            f"{path}: " + "; ".join(problems) + ". Give every slide one of the intended class "
            "names, spelled the same way, or remove its row"
        )


def _lines(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:SHOW])) + (", ..." if len(numbers) > SHOW else "")


def read_labels(path: str | Path) -> LabelTable:
    """Read and validate a labels CSV (UTF-8): every problem is a :class:`LabelError` naming the file and lines."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: labels CSV not found")
    columns, rows = _read_rows(path)
    if "slide_id" not in columns or "label" not in columns:
        raise LabelError(f"{path}: needs the columns slide_id,label[,patient_id][,split]; found {columns}")
    labels: dict[str, str] = {}
    patients: dict[str, str] = {}
    splits: dict[str, str] = {}
    lines: dict[str, list[int]] = {}
    for number, row in enumerate(rows, start=2):
        slide_id, label = row["slide_id"], row["label"]
        if not slide_id:
            continue
        lines.setdefault(label, []).append(number)
        if slide_id in labels and labels[slide_id] != label:
            raise LabelError(
                f"{path}: line {number}: slide {slide_id!r} labelled both {labels[slide_id]!r} and {label!r}"
            )
        labels[slide_id] = label
        patients[slide_id] = row.get("patient_id") or slide_id
        if "split" in columns:
            split = row.get("split", "").lower()
            if split not in ("train", "val", "test"):
                raise LabelError(f"{path}: line {number}: split {row.get('split')!r}; allowed: train, val, test")
            splits[slide_id] = split
    _check_label_values(path, lines)
    if not labels:
        raise LabelError(f"{path}: no labelled rows")
    return LabelTable(path, labels, patients, splits, _class_order(set(labels.values())))


@dataclass
class MatchReport:
    used: list[str]
    missing_features: list[str]  #: labelled, but no feature file
    unlabeled: list[str]  #: feature file, but no label
    empty: list[str] = field(default_factory=list)  #: N = 0, left out

    def lines(self) -> list[str]:
        lines = [f"{len(self.used)} slide(s) with labels and features"]
        for ids, what in (
            (self.missing_features, "labelled but without a feature file (left out)"),
            (self.unlabeled, "with features but no label (not used)"),
            (self.empty, "with an empty bag, N = 0 (left out)"),
        ):
            if ids:
                lines.append(f"{len(ids)} slide(s) {what}: {first_ids(ids)}")
        return lines


def match_labels(table: LabelTable, feature_set: FeatureSet) -> MatchReport:
    """Which labelled slides have features; logs what is left out, with counts and the first ids."""
    files = feature_set.files
    used = sorted(s for s in table.labels if s in files)
    report = MatchReport(used, sorted(set(table.labels) - set(files)), sorted(set(files) - set(table.labels)))
    where = feature_set.key or str(feature_set.root)
    if not used:
        raise LabelError(
            f"{table.path}: none of its {len(table.labels)} slide ids ({first_ids(list(table.labels))}) has a feature file "
            f"in {feature_set.root} (which has {first_ids(list(files))}); check the slide_id column (file names without extension)"
        )
    for line in report.lines()[1:]:
        logger.warning("%s: %s", where, line)
    return report
