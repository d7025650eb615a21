"""The ``wsi-mil`` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_mil import __version__
from wsi_mil import cli_options as options
from wsi_mil.errors import WsiMilError

logger = logging.getLogger("wsi_mil")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (see configs/default.yaml)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--workers", type=options.non_negative_int,
                        help="local Dask worker processes (default: one per core; 0: no Dask)")  # fmt: skip
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsi-mil", description=__doc__)
    parser.add_argument("--version", action="version", version=f"wsi-mil {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    tile = commands.add_parser(
        "tile",
        help="detect tissue and write patch bags",
        description="Tile slides into patch bags (HDF5 or Zarr) with a QC image per slide.",
    )
    tile.add_argument("paths", nargs="+", help="slide files, folders (recursive) or a CSV with a 'path' column")
    tile.add_argument("--out", required=True, type=Path, help="run directory")
    tile.add_argument("--target-mpp", type=options.positive_float, nargs="+",
                      help="target um/px; several give one bag set each")  # fmt: skip
    tile.add_argument("--magnification", type=options.positive_float, nargs="+",
                      help="target magnification(s), e.g. 20 (= 0.5 um/px)")  # fmt: skip
    tile.add_argument("--level", type=options.non_negative_int,
                      help="tile at this pyramid level in pixels (no MPP needed)")  # fmt: skip
    tile.add_argument("--patch-size", type=options.patch_size, help="patch side in pixels at the target resolution")
    tile.add_argument("--overlap", type=options.open_fraction, help="fraction of a patch shared with its neighbour")
    tile.add_argument("--tissue-threshold", type=options.fraction, help="minimum tissue fraction of a kept patch")
    tile.add_argument("--format", dest="bag_format", choices=("h5", "zarr"), help="bag format")
    tile.add_argument("--save-pixels", action="store_true", default=None, help="store patch pixels in the bag")
    tile.add_argument("--reader", choices=("auto", "openslide", "tiffslide", "image"), help="slide reader")
    tile.add_argument("--mpp", type=options.positive_float,
                      help="level-0 um/px of every slide, replacing what the files say (a CSV mpp column wins)")
    tile.add_argument("--extensions", nargs="+", help="file suffixes to pick up in folders")
    tile.add_argument("--slide-timeout", type=options.positive_float, metavar="SECONDS",
                      help="a slide taking longer fails and the batch goes on (tiling.slide_timeout)")  # fmt: skip
    _add_common(tile)
    tile.set_defaults(handler=_run_tile)

    extract = commands.add_parser(
        "extract",
        help="turn every bag of a run into a feature file",
        description="Extract features of every bag under RUN_DIR/bags into RUN_DIR/features/<encoder>/.",
    )
    extract.add_argument("run_dir", type=Path, help="run directory holding bags/ (from wsi-mil tile)")
    extract.add_argument("--encoder", help="encoder name (wsi-mil encoders) or timm:<model>")
    extract.add_argument("--weights", choices=("imagenet", "random"), help="pretrained weights (random: tests only)")
    extract.add_argument("--checkpoint-path", help="local weights file (.pth/.bin/.safetensors), e.g. UNI")
    extract.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    extract.add_argument("--batch-size", type=options.positive_int)
    extract.add_argument("--loader", choices=("auto", "threads", "processes"),
                         help="read patches with threads (CPU default) or DataLoader processes (CUDA default)")  # fmt: skip
    extract.add_argument("--num-workers", type=options.non_negative_int, help="reading threads or DataLoader processes")
    extract.add_argument("--format", dest="feature_format", choices=("h5", "zarr"))
    extract.add_argument("--dtype", choices=("float32", "float16"))
    extract.add_argument("--coords", type=Path, help="extract CLAM (create_patches_fp) or TRIDENT (*_patches.h5) "
                         "coords files from this folder instead of RUN_DIR/bags; needs --slides")  # fmt: skip
    extract.add_argument("--slides", help="with --coords: the slides (folder, file or CSV), matched by id")
    extract.add_argument("--clam-files", dest="clam_files", action="store_true", default=None,
                         help="also write RUN_DIR/clam/<encoder>/h5_files + pt_files (CLAM main.py's layout)")  # fmt: skip
    _add_common(extract)
    extract.set_defaults(handler=_run_extract)

    heatmap = commands.add_parser(
        "heatmap",
        help="stitch per-patch scores into slide heatmaps",
        description="Turn RUN_DIR/scores/<model>/*.h5 (from wsi-mil predict) into OME-Zarr, pyramidal TIFF, "
        "PNG and GeoJSON heatmaps under RUN_DIR/heatmaps/<model>/<slide_id>/.",
    )
    heatmap.add_argument("run_dir", type=Path, help="run directory holding scores/ (from wsi-mil predict)")
    heatmap.add_argument("--model", help="which scores/<model>/ folder (needed when there are several)")
    heatmap.add_argument("--maps", nargs="+", help="attention_pct attention_raw attention relevance logit contribution")
    heatmap.add_argument("--formats", nargs="+", help="zarr tiff rgba_tiff png geojson blend_tiff")
    heatmap.add_argument("--level", type=options.non_negative_int,
                         help="finest OME-Zarr scale: this slide pyramid level")  # fmt: skip
    heatmap.add_argument("--mpp", type=options.positive_float,
                         help="finest OME-Zarr scale in um/px (instead of --level)")  # fmt: skip
    heatmap.add_argument("--smooth-sigma", type=options.non_negative_float,
                         help="Gaussian sigma in pixels of the finest scale (0: none)")  # fmt: skip
    heatmap.add_argument("--cmap", help="matplotlib colormap of the colour-mapped outputs")
    heatmap.add_argument("--alpha", type=options.fraction, help="opacity of the colour map over the slide")
    heatmap.add_argument("--scale", choices=("slide", "cohort", "fixed"),
                         help="colour range: each slide's own, the run's cohort, or fixed (--range)")
    heatmap.add_argument("--range", type=options.finite_float, nargs=2, metavar=("LOW", "HIGH"), help="colour range of --scale fixed")
    _add_common(heatmap)
    heatmap.set_defaults(handler=_run_heatmap)

    evaluate = commands.add_parser(
        "evaluate-maps",
        help="score every heatmap map against annotations (localization table)",
        description="Compare each per-patch map of RUN_DIR/scores/<model>/ with ground-truth annotations "
        "(<slide_id>.png mask aligned to the slide, .geojson in level-0 pixels, or ASAP .xml), and measure "
        "bag-level faithfulness (confidence when a map's top patches are removed or kept alone); writes "
        "RUN_DIR/explanations/<model>/explanations.md and CSV tables.",
    )
    evaluate.add_argument("run_dir", type=Path, help="run directory holding scores/ (from wsi-mil predict)")
    evaluate.add_argument("--masks", type=Path, help="folder of <slide_id>.png|.geojson|.xml annotations (localization)")
    evaluate.add_argument("--no-faithfulness", dest="faithfulness", action="store_false",
                          help="skip the bag-level removal / keep-only curves (they re-run the heads)")  # fmt: skip
    evaluate.add_argument("--no-stain-baseline", dest="baseline", action="store_false",
                          help="skip the non-learned stain maps scored beside the learned ones (they read the slides)")
    evaluate.add_argument("--model", help="which scores/<model>/ folder (needed when there are several)")
    evaluate.add_argument("--positive-fraction", type=options.fraction, default=0.5,
                          help="a patch is lesion when at least this fraction of it is annotated")  # fmt: skip
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.add_argument("--debug", action="store_true")
    evaluate.set_defaults(handler=_run_evaluate_maps)

    _add_training_commands(commands)

    encoders = commands.add_parser("encoders", help="list the registered encoders")
    encoders.add_argument("--quiet", action="store_true")
    encoders.add_argument("--debug", action="store_true")
    encoders.set_defaults(handler=_run_encoders)

    run = commands.add_parser(
        "run",
        help="run every stage from one config file",
        description="tile -> extract -> train (each head of run.models) -> predict -> heatmap -> evaluate-maps, "
        "as the config's run section says; finished outputs are skipped, so rerunning resumes. A rerun whose "
        "settings differ from RUN_DIR/run_config.json in a key that shaped existing outputs is refused before any "
        "work (the message names the keys and outputs).",
    )
    run.add_argument("config", type=Path, help="YAML config with a run section (see configs/demo.yaml)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    run.add_argument("--workers", type=options.non_negative_int,
                     help="local Dask worker processes (default: one per core; 0: no Dask)")  # fmt: skip
    run.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    run.add_argument("--overwrite", action="store_true",
                     help="redo outputs that already exist; outputs made with settings other than "
                     "RUN_DIR/run_config.json's are removed first (without it, such a rerun is refused)")  # fmt: skip
    run.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    run.add_argument("--quiet", action="store_true", help="no progress bar, warnings and errors only")
    run.set_defaults(handler=_run_pipeline)

    demo = commands.add_parser("demo", help="build the demo cohort and run the whole pipeline on it (CPU, a few minutes)")
    demo.add_argument("--out", type=Path, help="demo folder: cohort/ and run/ (default: ./wsi-mil-demo)")
    demo.add_argument("--workers", type=options.non_negative_int, help="local Dask worker processes")
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--debug", action="store_true")
    demo.set_defaults(handler=_run_demo)

    view = commands.add_parser("view", help="browse a run's slides, maps and top patches in a local web viewer",
                               description="Serve a local web viewer of RUN_DIR (read-only) until Ctrl-C.")
    view.add_argument("run_dir", type=Path, help="run directory holding scores/ (from wsi-mil predict or run)")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    view.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    view.add_argument("--masks", type=Path, help="annotations folder (default: run.masks of the run's config)")
    view.add_argument("--quiet", action="store_true")
    view.add_argument("--debug", action="store_true")
    view.set_defaults(handler=_run_view)
    return parser


def _tiling_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    tiling = {
        key: getattr(args, key)
        for key in (
            "target_mpp", "magnification", "level", "patch_size", "overlap", "tissue_threshold",
            "bag_format", "save_pixels", "reader", "mpp", "extensions", "slide_timeout",
        )  # fmt: skip
        if getattr(args, key) is not None
    }
    if args.level is not None:
        tiling.setdefault("target_mpp", [])
    if args.magnification is not None:
        tiling.setdefault("target_mpp", [])
    parallel = {k: getattr(args, k) for k in ("workers", "scheduler") if getattr(args, k) is not None}
    return {"tiling": tiling, "parallel": parallel}


def _summarize(records: list[dict[str, Any]], run_dir: Path, stage: str = "tiling") -> int:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to do"
    from wsi_mil.run_layout import RunLayout

    logger.warning("%s: %s; manifest: %s", stage, summary, RunLayout(run_dir).manifest)
    return 1 if counts.get("failed") else 0


def _run_tile(args: argparse.Namespace) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.io.discover import find_slides
    from wsi_mil.tiling.tile import tile_slides

    config = load_config(args.config, overrides=_tiling_overrides(args), sets=args.set)
    sources = find_slides(args.paths, extensions=config.tiling.extensions)
    if not sources:
        raise WsiMilError(f"no slides found in {', '.join(args.paths)} (extensions: {' '.join(config.tiling.extensions)})")
    logger.info("tiling %d slide(s) into %s", len(sources), args.out)
    records = tile_slides(
        sources, args.out, config=config, overwrite=args.overwrite, debug=args.debug, progress=not args.quiet
    )
    return _summarize(records, args.out)


def _run_extract(args: argparse.Namespace) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.features.extract import extract_run

    extract = {
        key: getattr(args, key)
        for key in ("encoder", "weights", "checkpoint_path", "device", "batch_size", "loader", "num_workers",
                    "feature_format", "dtype", "clam_files")
        if getattr(args, key) is not None
    }
    parallel = {k: getattr(args, k) for k in ("workers", "scheduler") if getattr(args, k) is not None}
    config = load_config(args.config, overrides={"extract": extract, "parallel": parallel}, sets=args.set)
    records = extract_run(args.run_dir, config=config, overwrite=args.overwrite, debug=args.debug, progress=not args.quiet,
                          coords=args.coords, slides=args.slides)  # fmt: skip
    return _summarize(records, args.run_dir, "extraction")


def _run_heatmap(args: argparse.Namespace) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.explain.heatmap import heatmap_run

    heatmap = {
        key: getattr(args, key)
        for key in ("maps", "formats", "level", "mpp", "smooth_sigma", "cmap", "alpha", "scale", "range")
        if getattr(args, key) is not None
    }
    parallel = {k: getattr(args, k) for k in ("workers", "scheduler") if getattr(args, k) is not None}
    config = load_config(args.config, overrides={"heatmap": heatmap, "parallel": parallel}, sets=args.set)
    records = heatmap_run(args.run_dir, config=config, model=args.model, overwrite=args.overwrite, debug=args.debug,
                          progress=not args.quiet)  # fmt: skip
    return _summarize(records, args.run_dir, "heatmaps")


def _run_evaluate_maps(args: argparse.Namespace) -> int:
    from wsi_mil.explain.evaluate import EXPLANATIONS_MD, evaluate_maps

    result = evaluate_maps(args.run_dir, masks=args.masks, model=args.model, positive_fraction=args.positive_fraction,
                           faithfulness=args.faithfulness, baseline=args.baseline)  # fmt: skip
    if not args.quiet:
        print((result.out / EXPLANATIONS_MD).read_text())
        print(f"tables: {result.out}")
    return _summarize(result.records, args.run_dir, "evaluate-maps")


def _add_training_commands(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="cross-validate a MIL head on slide labels",
        description="Train and cross-validate a MIL head (abmil, abmil_plain, ilam) on the feature files of RUN_DIR "
        "(or --features) with slide labels; writes RUN_DIR/models/<name>/.",
    )
    train.add_argument("run_dir", type=Path, help="run directory (features/ from wsi-mil extract; models/ is written here)")
    train.add_argument("--labels", required=True, type=Path, help="CSV: slide_id,label[,patient_id][,split]")
    train.add_argument("--model", help="MIL head: abmil, abmil_plain or ilam")
    train.add_argument("--name", help="output folder under RUN_DIR/models/ (default: the model name)")
    train.add_argument("--features", type=Path, nargs="+", default=[],
                       help="feature folders instead of RUN_DIR/features (also CLAM h5_files/pt_files folders)")  # fmt: skip
    train.add_argument("--folds", type=options.fold_count, help="k of stratified k-fold cross-validation")
    train.add_argument("--repeats", type=options.positive_int,
                       help="rounds of k-fold cross-validation, each with its own fold seed")  # fmt: skip
    train.add_argument("--epochs", type=options.positive_int)
    train.add_argument("--seed", type=options.any_int)
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    _add_stage_options(train)
    train.set_defaults(handler=_run_train)

    predict = commands.add_parser(
        "predict",
        help="score slides with trained heads for the heatmap stage",
        description="Score the feature files of RUN_DIR with the folds of --model-dir: slide probabilities and "
        "per-patch maps in RUN_DIR/scores/<name>/<slide_id>.h5. Slides of the training CV are scored by the "
        "fold that held them out; others by the mean over folds.",
    )
    predict.add_argument("run_dir", type=Path, help="run directory with features/ (scores/ is written here)")
    predict.add_argument("--model-dir", required=True, type=Path, help="RUN_DIR/models/<name> of a wsi-mil train run")
    predict.add_argument("--features", type=Path, nargs="+", default=[], help="feature folders instead of RUN_DIR/features")
    predict.add_argument("--slides", nargs="+", help="only these slide ids")
    predict.add_argument("--all-folds", action="store_true", help="average every fold, also for slides of the CV")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--overwrite", action="store_true", help="redo score files that already exist")
    predict.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    predict.add_argument("--quiet", action="store_true", help="warnings and errors only")
    predict.set_defaults(handler=_run_predict)


def _add_stage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (see configs/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    parser.add_argument("--overwrite", action="store_true", help="retrain finished folds instead of resuming")
    parser.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")


def _run_train(args: argparse.Namespace) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.mil.run import model_dir_for, train_run

    train = {k: getattr(args, k) for k in ("model", "name", "folds", "repeats", "epochs", "seed", "device") if getattr(args, k) is not None}
    config = load_config(args.config, overrides={"train": train}, sets=args.set)
    train_run(args.run_dir, args.labels, config=config, features=args.features, overwrite=args.overwrite)
    model_dir = model_dir_for(args.run_dir, config)
    logger.warning("training done: %s", model_dir / "summary.md")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from wsi_mil.mil.predict import predict_run

    records = predict_run(args.run_dir, args.model_dir, features=args.features, device=args.device,
                          all_folds=args.all_folds, slide_ids=args.slides, overwrite=args.overwrite)  # fmt: skip
    return _summarize(records, args.run_dir, "prediction")


def _run_encoders(args: argparse.Namespace) -> int:
    from wsi_mil.features.registry import ENCODERS

    for name in ENCODERS.names():
        config = ENCODERS.get(name).config
        print(f"{name:20s} {config.embed_dim:5d}-d  {config.input_size}px  {config.description}")
    for namespace in ENCODERS.namespaces():
        print(f"{namespace.prefix + ':<name>':20s}   {namespace.description}, e.g. {namespace.example}")
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    from wsi_mil.pipeline import load_run_config, run_pipeline
    from wsi_mil.run_layout import RunLayout

    parallel = {k: getattr(args, k) for k in ("workers", "scheduler") if getattr(args, k) is not None}
    config = load_run_config(args.config, overrides={"parallel": parallel}, sets=args.set)
    result = run_pipeline(config, where=str(args.config), overwrite=args.overwrite, debug=args.debug,
                          progress=not args.quiet)  # fmt: skip
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.seconds.items())
    logger.warning("run done (%s); %d failed; manifest: %s", stages, result.failed, RunLayout(result.run_dir).manifest)
    return 1 if result.failed else 0


def _run_demo(args: argparse.Namespace) -> int:
    from wsi_mil.demo import format_report, run_demo

    result = run_demo(out=args.out, workers=args.workers, progress=not args.quiet, debug=args.debug)
    print(format_report(result))  # the demo's result tables are its output
    return 1 if result.pipeline.failed else 0


def _run_view(args: argparse.Namespace) -> int:
    from wsi_mil.view import serve

    if not 0 <= args.port <= 65535:
        raise WsiMilError(f"--port {args.port}: not a port number (0-65535)")
    serve(args.run_dir, host=args.host, port=args.port, masks=args.masks)
    return 0


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if args.debug else "%(message)s"))
    root = logging.getLogger("wsi_mil")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


#: Commands that write into RUN_DIR and whose library functions take no run lock themselves.
_LOCKED_COMMANDS = frozenset({"train", "predict", "heatmap", "evaluate-maps"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        if args.command in _LOCKED_COMMANDS and Path(args.run_dir).is_dir():  # tile, extract, run: in the library
            from wsi_mil.store.runlock import run_lock

            with run_lock(args.run_dir, f"wsi-mil {args.command}"):
                return int(args.handler(args))
        return int(args.handler(args))
    except WsiMilError as error:
        if args.debug:
            logger.exception("wsi-mil failed")
        else:
            logger.error("error: %s", error)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
