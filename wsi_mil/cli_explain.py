"""The ``heatmap`` and ``evaluate-maps`` sub-commands: per-patch scores to maps and their evaluation."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from wsi_mil import cli_options as options
from wsi_mil.cli_common import add_common, add_quiet_debug, configured, parallel_overrides, summarize

logger = logging.getLogger("wsi_mil")

MODEL_HELP = "which scores/<model>/ folder (default: the only one; needed when there are several)"


def add_heatmap(commands: Any) -> None:
    heatmap = commands.add_parser(
        "heatmap",
        help="stitch per-patch scores into slide heatmaps",
        description="Turn RUN_DIR/scores/<model>/*.h5 (from wsi-mil predict) into OME-Zarr, pyramidal TIFF, "
        "PNG and GeoJSON heatmaps under RUN_DIR/heatmaps/<model>/<slide_id>/.",
    )
    heatmap.add_argument("run_dir", type=Path, help="run directory holding scores/ (from wsi-mil predict)")
    heatmap.add_argument("--model", help=MODEL_HELP)
    heatmap.add_argument(
        "--maps",
        nargs="+",
        help=configured(
            "maps to draw: attention_pct attention_raw attention relevance logit contribution",
            "heatmap.maps",
            none="every map the scores have",
        ),
    )
    heatmap.add_argument(
        "--formats",
        nargs="+",
        help=configured("outputs per map: zarr tiff rgba_tiff png geojson gallery blend_tiff", "heatmap.formats"),
    )
    heatmap.add_argument(
        "--level",
        type=options.non_negative_int,
        help=configured("finest OME-Zarr scale: this slide pyramid level", "heatmap.level", none="level 0"),
    )
    heatmap.add_argument(
        "--mpp",
        type=options.positive_float,
        help=configured("finest OME-Zarr scale in um/px (instead of --level)", "heatmap.mpp", none="use --level"),
    )
    heatmap.add_argument(
        "--smooth-sigma",
        type=options.non_negative_float,
        help=configured("Gaussian sigma in pixels of the finest scale (0: none)", "heatmap.smooth_sigma"),
    )
    heatmap.add_argument("--cmap", help=configured("matplotlib colormap of the colour-mapped outputs", "heatmap.cmap"))
    heatmap.add_argument(
        "--alpha", type=options.fraction, help=configured("opacity of the colour map over the slide", "heatmap.alpha")
    )
    heatmap.add_argument(
        "--scale",
        choices=("slide", "cohort", "fixed"),
        help=configured("colour range: each slide's own, the run's cohort, or fixed (--range)", "heatmap.scale"),
    )
    heatmap.add_argument(
        "--range",
        type=options.finite_float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help=configured("colour range of --scale fixed", "heatmap.range", none="none"),
    )
    heatmap.add_argument(
        "--slide-timeout",
        type=options.positive_float,
        metavar="SECONDS",
        help=configured("a slide taking longer fails and the batch goes on", "heatmap.slide_timeout", none="no limit"),
    )
    add_common(heatmap)
    heatmap.set_defaults(handler=_run_heatmap)


def add_evaluate_maps(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate-maps",
        help="score every heatmap map against annotations (localization table)",
        description="Compare each per-patch map of RUN_DIR/scores/<model>/ with ground-truth annotations "
        "(<slide_id>.png mask aligned to the slide, .geojson in level-0 pixels, or ASAP .xml), and measure "
        "bag-level faithfulness (confidence when a map's top patches are removed or kept alone); writes "
        "RUN_DIR/explanations/<model>/explanations.md and CSV tables.",
    )
    evaluate.add_argument("run_dir", type=Path, help="run directory holding scores/ (from wsi-mil predict)")
    evaluate.add_argument(
        "--masks",
        type=Path,
        help="folder of <slide_id>.png|.geojson|.xml annotations (default: none, so no localization table)",
    )
    evaluate.add_argument(
        "--no-faithfulness",
        dest="faithfulness",
        action="store_false",
        help="skip the bag-level removal / keep-only curves (they re-run the heads)",
    )
    evaluate.add_argument(
        "--no-stain-baseline",
        dest="baseline",
        action="store_false",
        help="skip the non-learned stain maps scored beside the learned ones (they read the slides)",
    )
    evaluate.add_argument("--model", help=MODEL_HELP)
    evaluate.add_argument(
        "--positive-fraction",
        type=options.fraction,
        default=0.5,
        help="a patch is lesion when at least this fraction of it is annotated",
    )
    add_quiet_debug(evaluate)
    evaluate.set_defaults(handler=_run_evaluate_maps)


def _run_heatmap(args: argparse.Namespace) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.explain.heatmap import heatmap_run

    heatmap = {
        key: getattr(args, key)
        for key in (
            "maps",
            "formats",
            "level",
            "mpp",
            "smooth_sigma",
            "cmap",
            "alpha",
            "scale",
            "range",
            "slide_timeout",
        )
        if getattr(args, key) is not None
    }
    parallel = parallel_overrides(args)
    config = load_config(args.config, overrides={"heatmap": heatmap, "parallel": parallel}, sets=args.set)
    records = heatmap_run(
        args.run_dir,
        config=config,
        model=args.model,
        overwrite=args.overwrite,
        debug=args.debug,
        progress=not args.quiet,
    )
    return summarize(records, args.run_dir, "heatmaps")


def _run_evaluate_maps(args: argparse.Namespace) -> int:
    from wsi_mil.explain.evaluate import evaluate_maps
    from wsi_mil.explain.evaluate_tables import EXPLANATIONS_MD

    result = evaluate_maps(
        args.run_dir,
        masks=args.masks,
        model=args.model,
        positive_fraction=args.positive_fraction,
        faithfulness=args.faithfulness,
        baseline=args.baseline,
    )
    if not args.quiet:
        print((result.out / EXPLANATIONS_MD).read_text())
        print(f"tables: {result.out}")
    return summarize(result.records, args.run_dir, "evaluate-maps")
