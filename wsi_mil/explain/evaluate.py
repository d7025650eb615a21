"""``wsi-mil evaluate-maps``: how well each per-patch map localizes lesions, and how
faithfully it ranks the patches the model relies on.

Localization (with a masks folder): for every scored slide that has an annotation, every
map of its scores file (attention, ILAM latent logits and contributions, relevance) is
scored with :func:`localization_metrics`. Slides whose annotation is empty (negative
slides) count in the table but have no localization values. Faithfulness (needs the
trained heads in ``RUN_DIR/models``): bag-level removal / keep-only curves
(faithfulness.py) of every slide, for its predicted class. Outputs, under
``RUN_DIR/explanations/<model>/``:

- ``explanations_per_slide.csv`` and ``explanations.csv``: localization per slide and
  map, and per map (mean and std over annotated positive slides);
- ``faithfulness_per_slide.csv`` and ``faithfulness.csv``: the curves per slide, and
  their means per map and fraction;
- ``cams_per_slide.csv`` and ``cams.csv``: the CAM methods' confidence metrics and, with
  annotations, pixel-level localization inside the explained patches (cam_metrics.py);
- ``explanations.md``: both summary tables, maps side by side.

One bad slide costs its rows, not the tables: each evaluated slide gets a manifest row
(stage ``evaluate-maps``: ``done`` or ``failed`` with the error, and the slide libraries'
warnings), and the command exits 1 when any slide failed, like the other stages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from wsi_mil.errors import WsiMilError
from wsi_mil.explain.evaluate_slides import SlideOutcomes, cam_metric_rows, faithfulness_rows, localization_rows
from wsi_mil.explain.evaluate_tables import EXPLANATIONS_CSV, EXPLANATIONS_MD, csv_text, markdown_table, summarize
from wsi_mil.explain.heatmap import find_jobs
from wsi_mil.manifest import Manifest
from wsi_mil.run_layout import RunLayout
from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)


class MapsEvaluation(NamedTuple):
    """What :func:`evaluate_maps` made: the localization summary, the tables' folder, one manifest record per slide."""

    summary: list[dict[str, Any]]
    out: Path
    records: list[dict[str, Any]]


def evaluate_maps(
    run_dir: str | Path,
    *,
    masks: str | Path | None = None,
    model: str | None = None,
    positive_fraction: float = 0.5,
    faithfulness: bool = True,
    fractions: Sequence[float] | None = None,
    baseline: bool = True,
) -> MapsEvaluation:
    """Localization of every map on annotated slides (when ``masks`` is given; with ``baseline``,
    beside the non-learned stain maps and manifold seeds, with warnings for maps that are
    degenerate or do not beat the stain baseline) and bag-level faithfulness curves (when
    ``faithfulness``); writes the tables and a manifest row per slide; returns (localization summary
    rows, output folder, the slides' manifest records: ``failed`` where a slide could not be evaluated)."""
    from wsi_mil.explain.faithfulness import FRACTIONS, faithfulness_markdown, summarize_faithfulness

    if masks is None and not faithfulness:
        raise WsiMilError("nothing to evaluate: give a masks folder, or keep the faithfulness curves on")
    run_dir = Path(run_dir)
    model, jobs = find_jobs(run_dir, model=model)
    out = RunLayout(run_dir).explanations_dir(model)
    outputs: list[tuple[str, str]] = []
    markdown = [f"# Explanation metrics: {model}", ""]
    summary: list[dict[str, Any]] = []
    outcomes = SlideOutcomes()
    if masks is not None:
        from wsi_mil.explain.map_checks import map_warnings, warnings_markdown

        rows = localization_rows(jobs, Path(masks), positive_fraction, baseline, outcomes)
        evaluated = [row for row in rows if not row.get("error")]
        summary = summarize(evaluated)
        warnings = map_warnings(evaluated, summary)
        for warning in warnings:
            logger.warning("%s: %s", model, warning)
        outputs += [("explanations_per_slide.csv", csv_text(rows)), (EXPLANATIONS_CSV, csv_text(summary))]
        markdown += [warnings_markdown(warnings), markdown_table(summary)]
        failed = [f"- {row['slide_id']}: {row['error']}" for row in rows if row.get("error")]
        if failed:
            markdown += ["Slides not evaluated (see explanations_per_slide.csv):", *failed, ""]
    cams = cam_metric_rows(jobs, Path(masks) if masks is not None else None, outcomes)
    if cams:
        from wsi_mil.explain.cam_metrics import cam_markdown, summarize_cams

        outputs += [("cams_per_slide.csv", csv_text(cams)), ("cams.csv", csv_text(summarize_cams(cams)))]
        markdown.append(cam_markdown(summarize_cams(cams)))
    if faithfulness:
        curves = faithfulness_rows(jobs, fractions or FRACTIONS, outcomes)
        if curves:
            outputs += [
                ("faithfulness_per_slide.csv", csv_text(curves)),
                ("faithfulness.csv", csv_text(summarize_faithfulness(curves))),
            ]
            markdown.append(faithfulness_markdown(summarize_faithfulness(curves)))
    outputs.append((EXPLANATIONS_MD, "\n".join(markdown)))
    for name, text in outputs:
        with atomic_output(out / name) as tmp:
            tmp.write_text(text)
    manifest = Manifest(run_dir)  # the failures were logged as they happened
    records = manifest.update(outcomes.records())
    manifest.save()
    return MapsEvaluation(summary, out, records)
