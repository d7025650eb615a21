"""The per-slide work of ``wsi-mil evaluate-maps``: each scored slide's localization rows
(against its annotation), faithfulness curves and CAM metrics, and its manifest row (one
bad slide costs its rows, not the tables). evaluate.py writes the tables."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsi_mil.errors import WsiMilError
from wsi_mil.explain.annotations import find_annotation, load_ground_truth, patch_truth
from wsi_mil.explain.localization import localization_metrics
from wsi_mil.explain.maps import SlideScores, available_maps, read_scores
from wsi_mil.io.library_warnings import attach_warnings, capture_library_warnings

logger = logging.getLogger(__name__)

STAGE = "evaluate-maps"


class SlideOutcomes:
    """Each slide's errors and library warnings over the tables, for its manifest row."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}
        self.warnings: dict[str, list[str]] = {}
        self.jobs: dict[str, Any] = {}

    @contextlib.contextmanager
    def slide(self, job: Any, path: Path | None = None) -> Iterator[list[str]]:
        """Work on one slide: its library warnings are kept, an error is logged and kept (yields its error list)."""
        self.jobs.setdefault(job.slide_id, job)
        errors = self.errors.setdefault(job.slide_id, [])
        with capture_library_warnings() as captured:
            try:
                yield errors
            except Exception as error:  # noqa: BLE001 -- one bad slide costs its rows, not the tables
                errors.append(_slide_error(job.slide_id, path or job.scores_path, error))
        self.warnings.setdefault(job.slide_id, []).extend(captured)

    def records(self) -> list[dict[str, Any]]:
        records = []
        for slide_id, job in self.jobs.items():
            errors = self.errors.get(slide_id) or []
            record = {
                "stage": STAGE,
                "slide_id": slide_id,
                "bag_set": job.label,
                "path": str(job.scores_path),
                "status": "failed" if errors else "done",
                "error": "; ".join(errors),
            }
            records += attach_warnings([record], self.warnings.get(slide_id, []), slide_id=slide_id)
        return records


def _slide_dimensions(scores: SlideScores, bag_path: Path | None) -> tuple[int, int]:
    dims = scores.attrs.get("level_dim")
    if dims is None and bag_path is not None:
        from wsi_mil.store.bags import read_bag

        dims = read_bag(bag_path).attrs.get("level_dim")
    if dims is not None:
        return int(dims[0]), int(dims[1])
    slide_path = scores.attrs.get("slide_path")
    if slide_path and Path(str(slide_path)).exists():
        from wsi_mil.io.open import open_slide

        with open_slide(str(slide_path), mpp=scores.attrs.get("slide_mpp")) as slide:
            width, height = slide.dimensions
            return int(width), int(height)
    raise WsiMilError(
        f"{scores.path}: the slide size is unknown (no bag, slide not found at {slide_path}); "
        "keep RUN_DIR/bags or the slide where it was tiled"
    )


def _slide_file(scores: SlideScores) -> Path | None:
    slide_path = scores.attrs.get("slide_path")
    return Path(str(slide_path)) if slide_path and Path(str(slide_path)).exists() else None


def _stain_maps(scores: SlideScores, slide_path: Path) -> dict[str, np.ndarray]:
    """The stain baseline maps of a scored slide, read from its slide file ({} with a warning when unreadable)."""
    from wsi_mil.errors import SlideOpenError, SlideReadError
    from wsi_mil.explain.stain_baseline import stain_baseline_scores
    from wsi_mil.io.open import open_slide

    try:
        with open_slide(slide_path, mpp=scores.attrs.get("slide_mpp")) as slide:
            return stain_baseline_scores(slide, scores.coords, scores.patch_size_level0)
    except (SlideOpenError, SlideReadError) as error:
        logger.warning("%s: no stain baseline: %s", scores.slide_id, error)
        return {}


def evaluate_slide(
    scores: SlideScores,
    annotation: Path,
    *,
    bag_path: Path | None = None,
    positive_fraction: float = 0.5,
    baseline: bool = True,
) -> list[dict[str, Any]]:
    """One row per map: the slide's localization metrics (empty values for a negative slide).
    With ``baseline``, the non-learned stain maps (stain_baseline.py) and the manifold's seeds
    (map_checks.py) are scored beside the learned maps."""
    from wsi_mil.explain.map_checks import MANIFOLD, SEEDS, is_constant, manifold_seeds, seed_spread
    from wsi_mil.explain.stain_baseline import STAIN_MAPS

    truth = load_ground_truth(annotation, _slide_dimensions(scores, bag_path))
    fraction, grade = patch_truth(scores.coords, scores.patch_size_level0, truth)
    positives = int((fraction >= positive_fraction).sum())
    maps: dict[str, np.ndarray | None] = dict(available_maps(scores))
    attention = maps.get("attention_raw")
    if baseline and MANIFOLD in maps and attention is not None:
        maps[SEEDS] = manifold_seeds(attention)
    slide_path = _slide_file(scores) if baseline else None
    if slide_path is not None:  # computed only where they are scored
        maps.update(_stain_maps(scores, slide_path) if positives else dict.fromkeys(STAIN_MAPS))
    elif baseline:
        logger.warning("%s: no stain baseline: slide not found at %s", scores.slide_id, scores.attrs.get("slide_path"))
    rows = []
    for name, values in maps.items():
        row: dict[str, Any] = {
            "slide_id": scores.slide_id,
            "map": name,
            "n_patches": len(scores.coords),
            "n_lesion_patches": positives,
        }
        if values is not None:
            row["constant"] = is_constant(values)
            seeds = maps.get(SEEDS)
            if name == MANIFOLD and seeds is not None:
                row["spread"] = seed_spread(values, seeds)
            if positives:
                row.update(
                    localization_metrics(
                        values, fraction, grade, graded=truth.graded, positive_fraction=positive_fraction
                    )
                )
        rows.append(row)
    return rows


def localization_rows(
    jobs: Sequence[Any], masks: Path, positive_fraction: float, baseline: bool, outcomes: SlideOutcomes
) -> list[dict[str, Any]]:
    if not masks.is_dir():
        raise WsiMilError(f"{masks}: no such masks folder; give the folder holding <slide_id>.png|.geojson|.xml")
    rows: list[dict[str, Any]] = []
    missing = []
    for job in jobs:
        annotation = find_annotation(masks, job.slide_id)
        if annotation is None:
            missing.append(job.slide_id)
            continue
        with outcomes.slide(job, annotation) as errors:  # a bad annotation or scores file costs its slide's rows
            rows.extend(
                evaluate_slide(
                    read_scores(job.scores_path),
                    annotation,
                    bag_path=job.bag_path,
                    positive_fraction=positive_fraction,
                    baseline=baseline,
                )
            )
        if errors:
            rows.append({"slide_id": job.slide_id, "map": "", "error": errors[-1]})
    if missing:
        logger.warning(
            "%d scored slides have no annotation in %s (not evaluated), e.g. %s",
            len(missing),
            masks,
            ", ".join(missing[:5]),
        )
    if not rows:
        raise WsiMilError(f"{masks}: no annotation matches a scored slide (expected <slide_id>.png, .geojson or .xml)")
    if all(row.get("error") for row in rows):
        raise WsiMilError(f"{masks}: no annotated slide could be evaluated; the first: {rows[0]['error']}")
    return rows


def _slide_error(slide_id: str, path: Path, error: BaseException) -> str:
    """Log a slide's failure in one line and return it for the slide's row."""
    message = str(error) if isinstance(error, WsiMilError) else f"{path}: {type(error).__name__}: {error}"
    message = " ".join(message.split())
    logger.error("%s: not evaluated: %s", slide_id, message)
    return message


def faithfulness_rows(jobs: Sequence[Any], fractions: Sequence[float], outcomes: SlideOutcomes) -> list[dict[str, Any]]:
    """Curves of every slide for its predicted class (the heads must be in RUN_DIR/models); class
    maps are those of the predicted class (``logit_pred``, ``contribution_pred``)."""
    rows: list[dict[str, Any]] = []
    for job in jobs:
        with outcomes.slide(job):
            rows.extend({"slide_id": job.slide_id, **row} for row in _slide_curves(job, fractions))
    return rows


def _slide_curves(job: Any, fractions: Sequence[float]) -> list[dict[str, Any]]:
    from wsi_mil.explain.faithfulness import faithfulness_curves, load_heads, locate_heads
    from wsi_mil.mil.data import read_bag_features

    scores = read_scores(job.scores_path)
    target = int(scores.root_attrs.get("pred", scores.target_class()))
    inputs = locate_heads(scores, run_dir=job.run_dir, model=job.model, subset=job.subset)
    if isinstance(inputs, str):
        logger.warning("%s: no faithfulness curves: %s", job.slide_id, inputs)
        return []
    features, coords, _ = read_bag_features(inputs.feature_path)
    if not np.array_equal(np.asarray(coords), scores.coords):
        logger.warning("%s: feature file and scores differ in patches; re-run wsi-mil predict", job.slide_id)
        return []
    maps = available_maps(scores, target=target, label="pred")
    return faithfulness_curves(
        load_heads(inputs.fold_dirs, "cpu"), features, coords, maps, target=target, fractions=fractions
    )


def cam_metric_rows(jobs: Sequence[Any], masks: Path | None, outcomes: SlideOutcomes) -> list[dict[str, Any]]:
    """CAM metrics of every slide whose heatmap folder holds cams.h5 (wsi-mil heatmap)."""
    from wsi_mil.explain.cam_metrics import cam_rows
    from wsi_mil.explain.cams_file import CAMS_NAME

    rows: list[dict[str, Any]] = []
    for job in jobs:
        path = job.out_dir / CAMS_NAME
        if not path.exists():
            continue
        annotation = find_annotation(masks, job.slide_id) if masks is not None else None
        truth = None
        with outcomes.slide(job, annotation or path):
            if annotation is not None:
                truth = load_ground_truth(annotation, _slide_dimensions(read_scores(job.scores_path), job.bag_path))
            rows.extend(cam_rows(path, truth))
    return rows
