"""What the viewer shows of a run: its slides, each head's scores, labels, status and annotations.

Everything is found from ``RUN_DIR`` alone: ``scores/<model>/[<set>/]<slide_id>.h5`` (one
head per model and bag set), ``manifest.csv`` (status), ``models/**/splits.csv`` (labels),
``bags/`` (tissue masks), ``heatmaps/<model>/[<set>/]<slide_id>/cams.h5`` (CAMs) and the
annotations folder (``--masks``, else ``run.masks`` of ``run_config.json``). Slide files are
the paths the score files recorded. Score files are read on first use and kept (LRU).
"""

from __future__ import annotations

import csv
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import WsiMilError
from wsi_mil.explain.cams_file import CAMS_NAME
from wsi_mil.run_layout import RunLayout

logger = logging.getLogger(__name__)

#: Score files kept in memory (a slide's maps for every head).
SCORES_CACHE = 64
#: Values a slide gives, at most, to a map's cohort colour range.
COHORT_SAMPLE = 20_000


class RunNotViewableError(WsiMilError, FileNotFoundError):
    """The folder is not a run the viewer can show."""


@dataclass(frozen=True)
class HeadSummary:
    """One head's verdict on one slide, from the score file's root attributes."""

    path: Path
    classes: list[str]
    probs: list[float]
    pred: int
    folds: list[int]
    fold_policy: str


@dataclass
class SlideEntry:
    slide_id: str
    heads: dict[str, HeadSummary] = field(default_factory=dict)
    slide_path: Path | None = None
    bag_path: Path | None = None
    label: str = ""
    status: str = ""
    errors: list[str] = field(default_factory=list)
    annotation: Path | None = None

    def row(self) -> dict[str, Any]:
        """The slide list's row (JSON)."""
        heads = {
            name: {
                "classes": h.classes,
                "probs": h.probs,
                "pred": h.pred,
                "folds": h.folds,
                "fold_policy": h.fold_policy,
            }
            for name, h in self.heads.items()
        }
        return {
            "slide_id": self.slide_id,
            "label": self.label,
            "status": self.status,
            "errors": self.errors,
            "heads": heads,
            "has_image": self.slide_path is not None and self.slide_path.exists(),
            "has_annotation": self.annotation is not None,
        }


def head_name(model: str, subset: Path) -> str:
    """A head's key: the model, plus the bag set when scores have several (``abmil:0.5mpp``); never a '/'."""
    return model if subset == Path(".") else f"{model}:{subset.as_posix().replace('/', ':')}"


def _summary(path: Path) -> tuple[HeadSummary, dict[str, Any]]:
    import h5py

    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        coords_attrs = dict(f["coords"].attrs) if "coords" in f else {}

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    classes = json.loads(text(attrs.get("classes", "[]")))
    folds = json.loads(text(attrs.get("folds", "[]")))
    probs = [float(p) for p in np.asarray(attrs.get("probs", []), dtype=np.float64).reshape(-1)]
    pred = int(attrs["pred"]) if "pred" in attrs else int(np.argmax(probs)) if probs else 0
    geometry = {k: text(v) if isinstance(v, bytes | str) else v for k, v in coords_attrs.items()}
    return HeadSummary(
        path, [str(c) for c in classes], probs, pred, [int(f) for f in folds], text(attrs.get("fold_policy", ""))
    ), geometry


def _labels(run_dir: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    models = RunLayout(run_dir).models_root
    for path in sorted(models.rglob("splits.csv")) if models.is_dir() else []:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("slide_id") and row.get("label") is not None:
                    labels.setdefault(row["slide_id"], row["label"])
    return labels


def _manifest(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    path = RunLayout(run_dir).manifest
    if path.exists():
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(row.get("slide_id") or "", []).append(row)
    return rows


def _masks_folder(run_dir: Path, masks: Path | None) -> Path | None:
    if masks is not None:
        return masks
    config = RunLayout(run_dir).run_config
    if config.exists():
        try:
            value = json.loads(config.read_text()).get("run", {}).get("masks")
        except (OSError, ValueError):
            return None
        return Path(value) if value else None
    return None


class RunCatalog:
    """The slides of one run and their scores, read-only."""

    def __init__(self, run_dir: str | Path, *, masks: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir).resolve()
        if not self.run_dir.is_dir():
            raise RunNotViewableError(f"{run_dir}: no such folder; give the run directory of wsi-mil run/predict")
        self.layout = RunLayout(self.run_dir)
        score_files = list(self.layout.find_scores())
        if not score_files:
            raise RunNotViewableError(
                f"{self.run_dir}: no scores/<model>/<slide_id>.h5; run `wsi-mil predict` (or `wsi-mil run`) first"
            )
        self.slides: dict[str, SlideEntry] = {}
        self.geometry: dict[tuple[str, str], dict[str, Any]] = {}
        self.cams: dict[tuple[str, str], Path] = {}
        for model, subset, path in score_files:
            head = head_name(model, subset)
            try:
                summary, geometry = _summary(path)
            except (OSError, KeyError, ValueError) as error:
                logger.warning("%s: unreadable score file, not shown (%s)", path, error)
                continue
            entry = self.slides.setdefault(path.stem, SlideEntry(path.stem))
            entry.heads[head] = summary
            self.geometry[(path.stem, head)] = geometry
            if entry.slide_path is None and geometry.get("slide_path"):
                entry.slide_path = Path(str(geometry["slide_path"]))
            cams = self.layout.heatmap_dir(model, path.stem, subset) / CAMS_NAME
            if cams.exists():
                self.cams[(path.stem, head)] = cams
        self._bags(self.run_dir)
        labels, manifest = _labels(self.run_dir), _manifest(self.run_dir)
        for slide_id, rows in manifest.items():
            if slide_id and slide_id not in self.slides and any(r.get("status") == "failed" for r in rows):
                self.slides[slide_id] = SlideEntry(slide_id)
        folder = _masks_folder(self.run_dir, Path(masks) if masks else None)
        for slide_id, entry in self.slides.items():
            entry.label = labels.get(slide_id, "")
            rows = manifest.get(slide_id, [])
            entry.errors = [f"{r.get('stage')}: {r.get('error')}" for r in rows if r.get("status") == "failed"]
            entry.status = "failed" if entry.errors else "scored" if entry.heads else "not scored"
            if folder is not None and folder.is_dir():
                from wsi_mil.explain.annotations import find_annotation

                entry.annotation = find_annotation(folder, slide_id)
        self._scores: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def _bags(self, run_dir: Path) -> None:
        for _, bag in RunLayout(run_dir).find_bags():
            entry = self.slides.get(bag.stem)
            if entry is not None and entry.bag_path is None:
                entry.bag_path = bag

    def slide(self, slide_id: str) -> SlideEntry:
        """The slide with this id; KeyError for any other (the web layer answers 404)."""
        return self.slides[slide_id]

    def scores(self, slide_id: str, head: str) -> Any:
        """The slide's :class:`wsi_mil.explain.maps.SlideScores` for ``head`` (cached)."""
        from wsi_mil.explain.maps import read_scores

        key = (slide_id, head)
        with self._lock:
            if key in self._scores:
                self._scores.move_to_end(key)
                return self._scores[key]
        scores = read_scores(self.slides[slide_id].heads[head].path)
        with self._lock:
            self._scores[key] = scores
            while len(self._scores) > SCORES_CACHE:
                self._scores.popitem(last=False)
        return scores

    def maps(self, slide_id: str, head: str) -> dict[str, np.ndarray]:
        """Every per-patch map of this head on this slide: name -> (N,) float64 (computed once per score file read)."""
        from wsi_mil.explain.maps import available_maps

        scores = self.scores(slide_id, head)
        if not hasattr(scores, "viewer_maps"):
            scores.viewer_maps = available_maps(scores)
        return scores.viewer_maps

    def map_values(self, slide_id: str, head: str, name: str) -> np.ndarray:
        maps = self.maps(slide_id, head)
        if name not in maps:
            raise KeyError(name)
        return maps[name]

    def heads(self) -> list[str]:
        return sorted({h for entry in self.slides.values() for h in entry.heads})

    def cohort_values(self, head: str) -> dict[str, np.ndarray]:
        """Every map's values over every slide of the run that has it (for cohort colour ranges), reading each
        scores file once. A slide with more than :data:`COHORT_SAMPLE` patches gives that many evenly spaced
        quantiles of its values, so a cohort of thousands of slides stays a few hundred MB at most."""
        from wsi_mil.explain.maps import available_maps, read_scores

        parts: dict[str, list[np.ndarray]] = {}
        for slide_id, entry in self.slides.items():
            if head not in entry.heads:
                continue
            key = (slide_id, head)
            with self._lock:
                cached = self._scores.get(key)
            maps = (
                self.maps(slide_id, head) if cached is not None else available_maps(read_scores(entry.heads[head].path))
            )
            for name, values in maps.items():
                values = np.asarray(values, dtype=np.float32)
                if len(values) > COHORT_SAMPLE:
                    values = np.sort(values)[np.linspace(0, len(values) - 1, COHORT_SAMPLE).round().astype(np.int64)]
                parts.setdefault(name, []).append(values)
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}
