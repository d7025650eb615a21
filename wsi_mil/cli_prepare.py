"""The ``tile`` and ``extract`` sub-commands: slides to patch bags to feature files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from wsi_mil import cli_options as options
from wsi_mil.cli_common import add_common, configured, parallel_overrides, summarize
from wsi_mil.errors import WsiMilError

logger = logging.getLogger("wsi_mil")


def add_tile(commands: Any) -> None:
    tile = commands.add_parser(
        "tile",
        help="detect tissue and write patch bags",
        description="Find the tissue of each slide and cut it into a grid of patches at the target resolution: "
        "one patch bag (coordinates, optionally pixels; HDF5 or Zarr) per slide and resolution under OUT/bags/, a QC "
        "image per slide under OUT/qc/, one row per slide in OUT/manifest.csv. Rerunning skips finished slides.",
    )
    tile.add_argument("paths", nargs="+", help="slide files, folders (recursive) or a CSV with a 'path' column")
    tile.add_argument("--out", required=True, type=Path, help="run directory (created when missing)")
    tile.add_argument(
        "--target-mpp",
        type=options.positive_float,
        nargs="+",
        help=configured("target um/px; several give one bag set each", "tiling.target_mpp"),
    )
    tile.add_argument(
        "--magnification",
        type=options.positive_float,
        nargs="+",
        help=configured(
            "target magnification(s) instead of --target-mpp, e.g. 20 (= 0.5 um/px)", "tiling.magnification"
        ),
    )
    tile.add_argument(
        "--level",
        type=options.non_negative_int,
        help=configured(
            "tile at this pyramid level in pixels (no MPP needed)", "tiling.level", none="use --target-mpp"
        ),
    )
    tile.add_argument(
        "--patch-size",
        type=options.patch_size,
        help=configured("patch side in pixels at the target resolution", "tiling.patch_size"),
    )
    tile.add_argument(
        "--overlap",
        type=options.open_fraction,
        help=configured("fraction of a patch shared with its neighbour", "tiling.overlap"),
    )
    tile.add_argument(
        "--tissue-threshold",
        type=options.fraction,
        help=configured("minimum tissue fraction of a kept patch", "tiling.tissue_threshold"),
    )
    tile.add_argument(
        "--format", dest="bag_format", choices=("h5", "zarr"), help=configured("bag format", "tiling.bag_format")
    )
    tile.add_argument(
        "--save-pixels",
        action="store_true",
        default=None,
        help=configured("store patch pixels in the bag", "tiling.save_pixels"),
    )
    tile.add_argument(
        "--reader",
        choices=("auto", "openslide", "tiffslide", "image"),
        help=configured("slide reader; auto: the first that opens the file", "tiling.reader"),
    )
    tile.add_argument(
        "--mpp",
        type=options.positive_float,
        help=configured(
            "level-0 um/px of every slide, replacing what the files say (a CSV mpp column wins)",
            "tiling.mpp",
            none="what each file says",
        ),
    )
    tile.add_argument(
        "--extensions", nargs="+", help=configured("file suffixes to pick up in folders", "tiling.extensions")
    )
    tile.add_argument(
        "--slide-timeout",
        type=options.positive_float,
        metavar="SECONDS",
        help=configured("a slide taking longer fails and the batch goes on", "tiling.slide_timeout", none="no limit"),
    )
    add_common(tile)
    tile.set_defaults(handler=_run_tile)


def add_extract(commands: Any) -> None:
    extract = commands.add_parser(
        "extract",
        help="turn every bag of a run into a feature file",
        description="Run a frozen encoder over the patches of every bag under RUN_DIR/bags: one feature file "
        "(features + coords, CLAM's layout) per slide under RUN_DIR/features/<encoder>/. Rerunning skips finished "
        "slides.",
    )
    extract.add_argument("run_dir", type=Path, help="run directory holding bags/ (from wsi-mil tile)")
    extract.add_argument(
        "--encoder", help=configured("encoder name (see wsi-mil encoders) or timm:<model>", "extract.encoder")
    )
    extract.add_argument(
        "--weights",
        choices=("imagenet", "random"),
        help=configured("pretrained weights (random: tests only)", "extract.weights"),
    )
    extract.add_argument(
        "--checkpoint-path",
        help=configured(
            "local weights file (.pth/.bin/.safetensors), e.g. UNI",
            "extract.checkpoint_path",
            none="the --weights of the encoder",
        ),
    )
    extract.add_argument(
        "--device", help=configured("auto (CUDA when available), cpu, cuda or cuda:N", "extract.device")
    )
    extract.add_argument(
        "--batch-size",
        type=options.positive_int,
        help=configured("patches per batch", "extract.batch_size", none="32 on CPU, 256 on CUDA"),
    )
    extract.add_argument(
        "--loader",
        choices=("auto", "threads", "processes"),
        help=configured(
            "read patches with threads or DataLoader processes; auto: threads on CPU, processes on CUDA",
            "extract.loader",
        ),
    )
    extract.add_argument(
        "--num-workers",
        type=options.non_negative_int,
        help=configured(
            "reading threads or DataLoader processes", "extract.num_workers", none="1 on CPU, min(8, cores) on CUDA"
        ),
    )
    extract.add_argument(
        "--format",
        dest="feature_format",
        choices=("h5", "zarr"),
        help=configured("feature file format", "extract.feature_format"),
    )
    extract.add_argument(
        "--dtype", choices=("float32", "float16"), help=configured("stored feature dtype", "extract.dtype")
    )
    extract.add_argument(
        "--coords",
        type=Path,
        help="extract CLAM (create_patches_fp) or TRIDENT (*_patches.h5) "
        "coords files from this folder instead of RUN_DIR/bags; needs --slides (default: RUN_DIR/bags)",
    )
    extract.add_argument(
        "--slides",
        help="the slides (folder, file or CSV) of --coords, matched by id (default: none; needed with --coords)",
    )
    extract.add_argument(
        "--clam-files",
        dest="clam_files",
        action="store_true",
        default=None,
        help=configured(
            "also write RUN_DIR/clam/<encoder>/h5_files + pt_files (CLAM main.py's layout)", "extract.clam_files"
        ),
    )
    extract.add_argument(
        "--slide-timeout",
        type=options.positive_float,
        metavar="SECONDS",
        help=configured(
            "a slide taking longer stops reading patches and fails; the batch goes on",
            "extract.slide_timeout",
            none="no limit",
        ),
    )
    add_common(extract, workers="one per GPU with --device auto on CUDA, else 1")
    extract.set_defaults(handler=_run_extract)


def _tiling_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    tiling = {
        key: getattr(args, key)
        for key in (
            "target_mpp",
            "magnification",
            "level",
            "patch_size",
            "overlap",
            "tissue_threshold",
            "bag_format",
            "save_pixels",
            "reader",
            "mpp",
            "extensions",
            "slide_timeout",
        )
        if getattr(args, key) is not None
    }
    if args.level is not None:
        tiling.setdefault("target_mpp", [])
    if args.magnification is not None:
        tiling.setdefault("target_mpp", [])
    parallel = parallel_overrides(args)
    return {"tiling": tiling, "parallel": parallel}


def _run_tile(args: argparse.Namespace) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.io.discover import find_slides
    from wsi_mil.tiling.tile import tile_slides

    config = load_config(args.config, overrides=_tiling_overrides(args), sets=args.set)
    sources = find_slides(args.paths, extensions=config.tiling.extensions)
    if not sources:
        raise WsiMilError(
            f"no slides found in {', '.join(args.paths)} (extensions: {' '.join(config.tiling.extensions)})"
        )
    logger.info("tiling %d slide(s) into %s", len(sources), args.out)
    records = tile_slides(
        sources, args.out, config=config, overwrite=args.overwrite, debug=args.debug, progress=not args.quiet
    )
    return summarize(records, args.out)


def _run_extract(args: argparse.Namespace) -> int:
    from wsi_mil.config import load_config
    from wsi_mil.features.extract import extract_run

    extract = {
        key: getattr(args, key)
        for key in (
            "encoder",
            "weights",
            "checkpoint_path",
            "device",
            "batch_size",
            "loader",
            "num_workers",
            "feature_format",
            "dtype",
            "clam_files",
            "slide_timeout",
        )
        if getattr(args, key) is not None
    }
    parallel = parallel_overrides(args)
    config = load_config(args.config, overrides={"extract": extract, "parallel": parallel}, sets=args.set)
    records = extract_run(
        args.run_dir,
        config=config,
        overwrite=args.overwrite,
        debug=args.debug,
        progress=not args.quiet,
        coords=args.coords,
        slides=args.slides,
    )
    return summarize(records, args.run_dir, "extraction")
