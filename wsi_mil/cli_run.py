"""The ``run``, ``demo``, ``view`` and ``encoders`` sub-commands: whole runs and tools around them."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from wsi_mil import cli_options as options
from wsi_mil.cli_common import SET_HELP, add_dask_options, add_quiet_debug, parallel_overrides
from wsi_mil.errors import WsiMilError

logger = logging.getLogger("wsi_mil")


def add_encoders(commands: Any) -> None:
    encoders = commands.add_parser(
        "encoders",
        help="list the registered encoders",
        description="List the encoders wsi-mil extract --encoder accepts.",
    )
    add_quiet_debug(encoders)
    encoders.set_defaults(handler=_run_encoders)


def add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run every stage from one config file",
        description="Run every stage from one config file: tile -> extract -> train (each head of run.models) -> predict -> heatmap -> evaluate-maps, "
        "as the config's run section says; finished outputs are skipped, so rerunning resumes. A rerun whose "
        "settings differ from RUN_DIR/run_config.json in a key that shaped existing outputs is refused before any "
        "work (the message names the keys and outputs).",
    )
    run.add_argument("config", type=Path, help="YAML config with a run section (see configs/demo.yaml)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)
    add_dask_options(run, workers="one per core; extraction: one per GPU on CUDA, else 1")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="redo outputs that already exist; outputs made with settings other than "
        "RUN_DIR/run_config.json's are removed first (without it, such a rerun is refused)",
    )
    run.add_argument("--debug", action="store_true", help="log tracebacks of failures")
    run.add_argument("--quiet", action="store_true", help="no progress bar, warnings and errors only")
    run.set_defaults(handler=_run_pipeline)


def add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="build the demo cohort and run the whole pipeline on it (CPU, a few minutes)",
        description="Build a cohort of small slides of real H&E tissue with planted lesions, run every stage on it "
        "and print the slide-level and localization results.",
    )
    demo.add_argument("--out", type=Path, help="demo folder: cohort/ and run/ (default: ./wsi-mil-demo)")
    demo.add_argument(
        "--workers",
        type=options.non_negative_int,
        help="local Dask worker processes; 0: no Dask (default: one per core)",
    )
    add_quiet_debug(demo)
    demo.set_defaults(handler=_run_demo)


def add_view(commands: Any) -> None:
    view = commands.add_parser(
        "view",
        help="browse a run's slides, maps and top patches in a local web viewer",
        description="Serve a local web viewer of RUN_DIR (read-only) until Ctrl-C.",
    )
    view.add_argument("run_dir", type=Path, help="run directory holding scores/ (from wsi-mil predict or run)")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    view.add_argument("--port", type=int, default=8000, help="port")
    view.add_argument("--masks", type=Path, help="annotations folder (default: run.masks of the run's config)")
    add_quiet_debug(view)
    view.set_defaults(handler=_run_view)


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

    parallel = parallel_overrides(args)
    config = load_run_config(args.config, overrides={"parallel": parallel}, sets=args.set)
    result = run_pipeline(
        config, where=str(args.config), overwrite=args.overwrite, debug=args.debug, progress=not args.quiet
    )
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
